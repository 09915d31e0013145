"""Read the whole KV pool as one input, laid out so each layer's Gather yields its past in GQA's
layout, with no Transpose (a copy of the past) per layer and per K/V.

The portable graph takes the pool per layer (`key_cache.{l}`, `value_cache.{l}` [NB, bs, KVH, D]).
The ORT engine takes it whole as `kv_pool` [L, 2, NB, KVH, bs, D] (heads before tokens within a
block; the runtime allocates what the engine's metadata names, runtime/engines/onnxruntime.py) and
gathers (block, head) rows, so no copy is spent on a transpose:

    idx[c]  = (c·NB + block_tables[b, m])·KVH + h     [2L] × [1, B, KVH, M]  (small, once; c = 2l + K|V)
    Gather(kv_pool as [L·2·NB·KVH, bs, D], idx[c])    [1, B, KVH, M, bs, D]  (per layer, K and V)
    Reshape                                          [B, KVH, P = M·bs, D]

which is what each layer's GroupQueryAttention reads as its past. (One Gather of every layer and a
Split was measured: the Split copies the whole past once more, 10% of a step at 512 cached tokens.)
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from builder.build.ort_fusion.graph_edit import constant, take_over
from runtime import decoder_io as io
from runtime.engines.onnxruntime import HEADS_MAJOR, KV_LAYOUT


def _past_chain(cache: ir.Value) -> list[ir.Node] | None:
    """[Gather, Reshape, Transpose] consuming `cache`, when that is all that reads it."""
    uses = list(cache.uses())
    if len(uses) != 1:
        return None
    chain = [uses[0].node]
    for op_type in ("Reshape", "Transpose"):
        users = list(chain[-1].outputs[0].uses())
        if len(users) != 1 or users[0].node.op_type != op_type:
            return None
        chain.append(users[0].node)
    if chain[0].op_type != "Gather" or chain[0].attributes.get_int("axis", 0) != 0:
        return None
    if list(chain[2].attributes["perm"].as_ints()) != [0, 2, 1, 3]:
        return None
    return chain


def fuse_kv_pool(model: ir.Model) -> int:
    """Replace the per-layer pool inputs by `kv_pool`; returns the number of layers rewritten
    (0 when any layer reads its pool otherwise, e.g. an unfused attention)."""
    graph = model.graph
    inputs = {value.name: value for value in graph.inputs}
    layers = sum(1 for name in inputs if name.startswith("key_cache."))
    names = io.kv_input_names(layers)
    if not layers or any(name not in inputs for name in names):
        return 0
    chains = [_past_chain(inputs[name]) for name in names]
    if any(chain is None for chain in chains):
        return 0
    first = inputs[names[0]]
    _, block_size, kv_heads, head_dim = first.shape
    pool = ir.Value(
        name=io.KV_POOL,
        shape=ir.Shape([layers, 2, first.shape[0], kv_heads, block_size, head_dim]),
        type=first.type,
    )
    graph.inputs.append(pool)
    tables = inputs[io.BLOCK_TABLES]

    def node(op_type: str, inputs: list, **attributes) -> ir.Node:
        made = ir.node(op_type, inputs, attributes=attributes, name=f"kv_pool/{op_type}", num_outputs=1)
        nodes.append(made)
        return made.outputs[0]

    nodes: list[ir.Node] = []
    # Row r of the pool seen as [L·2·NB·KVH, bs, D] is (layer, K|V, block, head) in that order.
    rows = node("Reshape", [pool, constant(graph, "kv_pool/rows", [-1, block_size, head_dim])])
    per_head = node("Mul", [node("Unsqueeze", [tables, constant(graph, "kv_pool/last", [-1])]),
                            constant(graph, "kv_pool/heads", [kv_heads])])  # fmt: skip
    index = node("Add", [per_head, constant(graph, "kv_pool/head", np.arange(kv_heads))])  # [B, M, KVH]
    index = node("Transpose", [index], perm=[0, 2, 1])  # [B, KVH, M]
    blocks_x_heads = node(
        "Mul", [node("Shape", [pool], start=2, end=3), constant(graph, "kv_pool/kvh", [kv_heads])]
    )
    stride = node(
        "Mul", [constant(graph, "kv_pool/planes", np.arange(2 * layers).reshape(-1, 1, 1, 1)), blocks_x_heads]
    )
    planes = node(
        "Add", [node("Unsqueeze", [index, constant(graph, "kv_pool/first", [0])]), stride]
    )  # [2L, B, KVH, M]
    split = ir.node("Split", [planes], attributes={"axis": 0, "num_outputs": 2 * layers},
                    num_outputs=2 * layers, name="kv_pool/Split")  # fmt: skip
    nodes.append(split)
    # [B, KVH, M·bs, D] from block_tables' [B, M] (batch and block count are dynamic)
    tokens = node(
        "Mul", [node("Shape", [tables], start=1, end=2), constant(graph, "kv_pool/block", [block_size])]
    )
    shape = node("Concat", [node("Shape", [tables], start=0, end=1), constant(graph, "kv_pool/kv_heads", [kv_heads]),
                            tokens, constant(graph, "kv_pool/d", [head_dim])], axis=0)  # fmt: skip
    graph.insert_before(chains[0][0], nodes)
    for chain, plane in zip(chains, split.outputs, strict=True):
        gather = ir.node("Gather", [rows, plane], attributes={"axis": 0}, name=f"{chain[0].name}/pool")
        past = ir.node("Reshape", [gather.outputs[0], shape], name=f"{chain[0].name}/past")  # [B, KVH, P, D]
        graph.insert_before(chain[0], [gather, past])
        take_over(chain[2].outputs[0], past.outputs[0])
        for old in reversed(chain):
            graph.remove(old, safe=True)
    for name in names:
        graph.inputs.remove(inputs[name])
    model.metadata_props[KV_LAYOUT] = HEADS_MAJOR
    return layers
