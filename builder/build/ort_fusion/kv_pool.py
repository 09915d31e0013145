"""Read the whole KV pool as one input with one Gather, instead of six nodes per layer.

The portable graph takes the pool per layer (`key_cache.{l}`, `value_cache.{l}` [NB, bs, KVH, D])
and every layer gathers, reshapes and transposes its own past. The runtime already keeps the pool
as one array [L, 2, NB, bs, KVH, D] (runtime/paged_decoder.py), so the ORT engine takes it whole
as `kv_pool` and gathers every layer's blocks at once:

    Gather(kv_pool, blocks, axis=2)  [L, 2, B·M, bs, KVH, D]
    Reshape                          [2L·B, M·bs, KVH, D]
    Transpose                        [2L·B, KVH, M·bs, D]
    Slice                            [2L·B, KVH, P, D]   P = max(past_lens), as GQA wants it
    Split(num_outputs=2L)            2L × [B, KVH, P, D], layer-major, K before V

which is what each layer's GroupQueryAttention reads as its past.
"""

from __future__ import annotations

import onnx_ir as ir

from runtime import decoder_io as io


def _past_chain(cache: ir.Value) -> list[ir.Node] | None:
    """[Gather, Reshape, Transpose, Slice] consuming `cache`, when that is all that reads it."""
    uses = list(cache.uses())
    if len(uses) != 1:
        return None
    gather = uses[0].node
    chain = [gather]
    for op_type in ("Reshape", "Transpose", "Slice"):
        users = list(chain[-1].outputs[0].uses())
        if len(users) != 1 or users[0].node.op_type != op_type:
            return None
        chain.append(users[0].node)
    if gather.op_type != "Gather" or gather.attributes.get_int("axis", 0) != 0:
        return None
    if list(chain[2].attributes["perm"].as_ints()) != [0, 2, 1, 3]:
        return None
    return chain


def _constant(graph: ir.Graph, name: str, values: list[int]) -> ir.Value:
    value = ir.Value(
        name=name,
        shape=ir.Shape([len(values)]),
        type=ir.TensorType(ir.DataType.INT64),
        const_value=ir.tensor(values, dtype=ir.DataType.INT64, name=name),
    )
    graph.register_initializer(value)
    return value


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
    if any(chain is None for chain in chains) or len({c[0].inputs[1] for c in chains}) != 1:
        return 0
    if len({tuple(c[3].inputs[1:]) for c in chains}) != 1:  # one cut for every layer
        return 0
    first = inputs[names[0]]
    _, block_size, kv_heads, head_dim = first.shape
    blocks, tables = chains[0][0].inputs[1], inputs[io.BLOCK_TABLES]
    pool = ir.Value(
        name=io.KV_POOL,
        shape=ir.Shape([layers, 2, first.shape[0], block_size, kv_heads, head_dim]),
        type=first.type,
    )
    graph.inputs.append(pool)

    # [2L·B, M·bs, KVH, D] from block_tables' [B, M]
    table_shape = ir.node("Shape", [tables], name="kv_pool/table_shape")
    rows = ir.node("Mul", [table_shape.outputs[0], _constant(graph, "kv_pool/scale", [2 * layers, block_size])],
                   name="kv_pool/rows")  # fmt: skip
    shape = ir.node("Concat", [rows.outputs[0], _constant(graph, "kv_pool/head", [kv_heads, head_dim])],
                    attributes={"axis": 0}, name="kv_pool/shape")  # fmt: skip
    gather = ir.node("Gather", [pool, blocks], attributes={"axis": 2}, name="kv_pool/gather")
    reshape = ir.node("Reshape", [gather.outputs[0], shape.outputs[0]], name="kv_pool/reshape")
    transpose = ir.node(
        "Transpose", [reshape.outputs[0]], attributes={"perm": [0, 2, 1, 3]}, name="kv_pool/transpose"
    )
    cut = ir.node("Slice", [transpose.outputs[0], *chains[0][3].inputs[1:]], name="kv_pool/cut")
    split = ir.node("Split", [cut.outputs[0]], attributes={"axis": 0, "num_outputs": 2 * layers},
                    num_outputs=2 * layers, name="kv_pool/split")  # fmt: skip
    graph.insert_before(chains[0][0], [table_shape, rows, shape, gather, reshape, transpose, cut, split])
    for chain, past in zip(chains, split.outputs, strict=True):
        past.type, past.shape = chain[3].outputs[0].type, chain[3].outputs[0].shape
        chain[3].outputs[0].replace_all_uses_with(past)
        for node in reversed(chain):
            graph.remove(node, safe=True)
    for name in names:
        graph.inputs.remove(inputs[name])
    return layers
