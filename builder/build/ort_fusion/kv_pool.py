"""Read each layer's past with one Gather that yields GroupQueryAttention's layout directly.

The portable graph takes the pool per layer (`key_cache.{l}`, `value_cache.{l}` [NB, bs, KVH, D])
and gathers, reshapes and transposes its blocks (a copy of the past) per layer and per K/V. The
ORT engine keeps the per-layer inputs but takes them heads-major and flattened into rows of one
token's head, [NB·KVH·bs, D] (the runtime's pool [L, 2, NB, KVH, bs, D], each slab viewed as rows;
runtime/kv/pool.py). One index, computed once for every layer, names the row of each token of
each head of the past:

    idx[b, h, p] = (block_tables[b, p // bs]·KVH + h)·bs + p % bs     [B, KVH, P = M·bs]   (once)
    Gather(key_cache.{l}, idx)                                       [B, KVH, P, D]       (per layer, K and V)

which is what GroupQueryAttention reads as its past: no Reshape, no Transpose, no Split of a
whole-pool index per layer.
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


def _past_rows(graph: ir.Graph, tables: ir.Value, kv_heads: int, block_size: int) -> list[ir.Node]:
    """Nodes computing idx [B, KVH, M·bs] from block_tables [B, M]; the last one's output is idx."""
    nodes: list[ir.Node] = []

    def node(op_type: str, inputs: list) -> ir.Value:
        nodes.append(ir.node(op_type, inputs, name=f"kv_pool/{op_type}", num_outputs=1))
        return nodes[-1].outputs[0]

    block = node("Unsqueeze", [tables, constant(graph, "kv_pool/axes", [1, 3])])  # [B, 1, M, 1]
    first_row = node("Mul", [block, constant(graph, "kv_pool/block_rows", [kv_heads * block_size])])
    heads, tokens = np.arange(kv_heads).reshape(-1, 1), np.arange(block_size)
    within = (heads * block_size + tokens).reshape(1, kv_heads, 1, block_size)
    rows = node("Add", [first_row, constant(graph, "kv_pool/within_block", within)])  # [B, KVH, M, bs]
    node("Reshape", [rows, constant(graph, "kv_pool/per_head", [0, 0, -1])])
    return nodes


def fuse_kv_pool(model: ir.Model) -> int:
    """Make the per-layer pool inputs heads-major rows, each read by one Gather; returns the number
    of layers rewritten (0 when any layer reads its pool otherwise, e.g. an unfused attention)."""
    graph = model.graph
    inputs = {value.name: value for value in graph.inputs}
    layers = sum(1 for name in inputs if name.startswith("key_cache."))
    names = io.kv_input_names(layers)
    if not layers or any(name not in inputs for name in names):
        return 0
    chains = [_past_chain(inputs[name]) for name in names]
    if any(chain is None for chain in chains):
        return 0
    _, block_size, kv_heads, head_dim = inputs[names[0]].shape
    index = _past_rows(graph, inputs[io.BLOCK_TABLES], kv_heads, block_size)
    graph.insert_before(chains[0][0], index)
    past_rows = index[-1].outputs[0]
    for name, chain in zip(names, chains, strict=True):
        old = inputs[name]
        rows = ir.Value(name=name, shape=ir.Shape(["pool_rows", head_dim]), type=old.type)
        graph.inputs[graph.inputs.index(old)] = rows
        gather = ir.node("Gather", [rows, past_rows], attributes={"axis": 0}, name=f"{chain[0].name}/pool")
        graph.insert_before(chain[0], [gather])
        take_over(chain[2].outputs[0], gather.outputs[0])  # [B, KVH, P, D]
        for node in reversed(chain):
            graph.remove(node, safe=True)
    model.metadata_props[KV_LAYOUT] = HEADS_MAJOR
    return layers
