"""Assemble the `new_kv` output [L, 2, B, S, KVH, D] with one Concat instead of four nodes per layer.

After the attention fusion each layer's slice is Transpose(Reshape(Concat(k, v, axis=-1))) of its
[B, S, 2·KVH·D] K/V, stacked by an Unsqueeze per layer and one Concat. Concatenating the layers'
[B, S, 2·KVH·D] pieces along the last axis and then reshaping and transposing once gives the
same tensor.
"""

from __future__ import annotations

import onnx_ir as ir

from builder.build.ort_fusion.graph_edit import constant, take_over
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
