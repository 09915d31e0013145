"""Assemble the `new_kv` output [L, 2, B, S, KVH, D] with one Concat instead of four nodes per layer.

After the attention fusion each layer's slice is Transpose(Reshape(Concat(k, v, axis=-1))) of its
[B, S, 2·KVH·D] K/V, stacked by an Unsqueeze per layer and one Concat. Concatenating the layers'
[B, S, 2·KVH·D] pieces along the last axis and then reshaping and transposing once gives the
same tensor.

Where GroupQueryAttention reads each layer's q/k/v packed and rotates them itself
(paged_attention.py), a layer's K and V are slices of its packed projection and K is rotated once
more for the pool: every layer's packed projections are then joined, sliced and K rotated in one
node each (RotaryEmbedding over L·KVH heads), instead of three nodes per layer.
"""

from __future__ import annotations

import onnx_ir as ir

from builder.build.ort_fusion.graph_edit import constant, take_over
from builder.build.ort_fusion.rotary import same_rotary
from runtime import decoder_io as io


def _layer_piece(value: ir.Value) -> tuple[ir.Value, int, int] | None:
    """(kv [B, S, 2·KVH·D], KVH, D) if `value` is Unsqueeze(Transpose(Reshape(Concat(k, v))), 0)."""
    chain = []
    for op_type in ("Unsqueeze", "Transpose", "Reshape", "Concat"):
        node = value.producer()
        if node is None or node.op_type != op_type:
            return None
        chain.append(node)
        value = node.inputs[0]
    concat = chain[-1]
    shape = chain[2].inputs[1].const_value
    if shape is None or len(concat.inputs) != 2:
        return None
    _, _, two, kv_heads, head_dim = shape.numpy().tolist()
    if two != 2 or list(chain[1].attributes["perm"].as_ints()) != [2, 0, 1, 3, 4]:
        return None
    return concat.outputs[0], kv_heads, head_dim


def _packed_source(kv: ir.Value) -> tuple[ir.Value, ir.Node, int, int] | None:
    """(packed q/k/v, K's rotary node, K's first column, V's last) if kv is
    Concat(RotaryEmbedding(Slice(qkv, k0, k1)), Slice(qkv, k1, end)) over a [B, S, ·] qkv."""
    concat = kv.producer()
    rotary = concat.inputs[0].producer()
    v_slice = concat.inputs[1].producer()
    if rotary is None or rotary.op_type != "RotaryEmbedding" or v_slice is None or v_slice.op_type != "Slice":
        return None
    k_slice = rotary.inputs[0].producer()
    if k_slice is None or k_slice.op_type != "Slice" or k_slice.inputs[0] is not v_slice.inputs[0]:
        return None
    bounds = [_ints(s.inputs[i]) for s in (k_slice, v_slice) for i in (1, 2, 3)]  # starts, ends, axes
    (k0, k1, k_axis, v0, v1, v_axis) = bounds
    qkv = v_slice.inputs[0]
    width = qkv.shape[-1] if qkv.shape is not None else None  # unknown on a rewriter's new Concat
    if None in bounds or k_axis != [-1] or v_axis != [-1] or k1 != v0 or width not in (None, v1[0]):
        return None
    return qkv, rotary, k0[0], v1[0]


def _ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None:
        return None
    return [int(v) for v in value.const_value.numpy().reshape(-1)]


def _join_packed(graph: ir.Graph, stack: ir.Node, pieces: list, output: ir.Value) -> int:
    """new_kv from every layer's packed q/k/v (see the module docstring); 0 if the layers' pieces
    are not all packed alike."""
    sources = [_packed_source(p[0]) for p in pieces]
    if any(s is None for s in sources):
        return 0
    _, kv_heads, head_dim = pieces[0]
    rotary = sources[0][1]
    same = all(s[2:] == sources[0][2:] and same_rotary(s[1], rotary) for s in sources)
    k_start, width = sources[0][2:]
    if not same or k_start % head_dim or width != k_start + 2 * kv_heads * head_dim:
        return 0
    layers, q_heads = len(pieces), k_start // head_dim
    nodes: list[ir.Node] = []

    def node(op_type: str, inputs: list, **attributes) -> ir.Value:
        domain = "com.microsoft" if op_type == "RotaryEmbedding" else ""
        made = ir.node(op_type, inputs, attributes=attributes, domain=domain, name=f"new_kv/{op_type}")
        nodes.append(made)
        return made.outputs[0]

    def heads(first: int, name: str) -> ir.Value:  # [B, S, L, KVH, D] from each layer's heads
        bounds = [
            constant(graph, f"new_kv/{name}_{i}", [v]) for i, v in enumerate((first, first + kv_heads, 3))
        ]
        return node("Slice", [joined, *bounds])

    # [B, S, L·(H + 2·KVH)·D] → [B, S, L, H + 2·KVH, D]
    joined = node("Reshape", [node("Concat", [s[0] for s in sources], axis=-1),
                              constant(graph, "new_kv/heads", [0, 0, layers, q_heads + 2 * kv_heads, head_dim])])  # fmt: skip
    flat_k = node("Reshape", [heads(q_heads, "k"), constant(graph, "new_kv/flat", [0, 0, -1])])
    attributes = {n: a.value for n, a in rotary.attributes.items()} | {"num_heads": layers * kv_heads}
    rotated = node("RotaryEmbedding", [flat_k, *rotary.inputs[1:]], **attributes)
    layer_shape = constant(graph, "new_kv/layer", [0, 0, layers, 1, kv_heads, head_dim])
    k = node("Reshape", [rotated, layer_shape])
    v = node("Reshape", [heads(q_heads + kv_heads, "v"), layer_shape])
    # [B, S, L, 2, KVH, D] → [L, 2, B, S, KVH, D]
    final = node("Transpose", [node("Concat", [k, v], axis=3)], perm=[2, 3, 0, 1, 4, 5])
    graph.insert_before(stack, nodes)
    take_over(output, final)
    return 1


def fuse_new_kv(model: ir.Model) -> int:
    """Rewrite the graph's `new_kv` output producer in place; returns 1 if it was rewritten."""
    graph = model.graph
    output = next((o for o in graph.outputs if o.name == io.NEW_KV), None)
    stack = output.producer() if output is not None else None
    if stack is None or stack.op_type != "Concat":
        return 0
    pieces = [_layer_piece(value) for value in stack.inputs]
    if not pieces or any(p is None for p in pieces) or len({p[1:] for p in pieces}) != 1:
        return 0
    if _join_packed(graph, stack, pieces, output):
        return 1
    _, kv_heads, head_dim = pieces[0]
    layers = len(pieces)

    joined = ir.node("Concat", [p[0] for p in pieces], attributes={"axis": -1}, name="new_kv/concat")
    shape = constant(graph, "new_kv/shape", [0, 0, layers, 2, kv_heads, head_dim])
    split = ir.node("Reshape", [joined.outputs[0], shape], name="new_kv/reshape")
    # [B, S, L, 2, KVH, D] → [L, 2, B, S, KVH, D]
    final = ir.node(
        "Transpose", [split.outputs[0]], attributes={"perm": [2, 3, 0, 1, 4, 5]}, name="new_kv/transpose"
    )
    graph.insert_before(stack, [joined, split, final])
    take_over(output, final.outputs[0])
    return 1
