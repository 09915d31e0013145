"""Float projections read packed → one MatMul over the concatenated weights.

GroupQueryAttention reads q/k/v packed (paged_attention.py): a Concat of three projections of one
tensor. Quantised engines pack their MatMulNBits and drop the Concat (matmul_nbits.py); float
engines (fp32, fp16) get the same here: one MatMul (and one bias Add, GLM's q/k/v biases) over the
weights concatenated along N, instead of three MatMuls and a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from builder.build.ort_fusion.graph_edit import initializer, take_over


@dataclass(frozen=True)
class _Projection:
    x: ir.Value
    weight: np.ndarray  # [K, N]
    bias: np.ndarray | None  # [N]


def _constant(value: ir.Value) -> np.ndarray | None:
    return None if value.const_value is None else value.const_value.numpy()


def _projection(value: ir.Value) -> _Projection | None:
    """x·W (+ b) with constant W [K, N] (and b [N]) if that is how `value` is made, read once."""
    node = value.producer()
    if node is None or len(list(value.uses())) != 1:
        return None
    bias = None
    if node.op_type == "Add":
        matmul_out = next(
            (v for v in node.inputs if v.producer() is not None and v.producer().op_type == "MatMul"), None
        )
        if matmul_out is None or len(list(matmul_out.uses())) != 1:
            return None
        bias = _constant(node.inputs[1] if node.inputs[0] is matmul_out else node.inputs[0])
        if bias is None or bias.ndim != 1:
            return None
        node = matmul_out.producer()
    if node.op_type != "MatMul":
        return None
    weight = _constant(node.inputs[1])
    if weight is None or weight.ndim != 2 or (bias is not None and bias.shape[0] != weight.shape[1]):
        return None
    return _Projection(node.inputs[0], weight, bias)


def pack_float_projections(model: ir.Model) -> int:
    """Rewrite in place every last-axis Concat of float projections of one tensor; returns how many."""
    graph, packed = model.graph, 0
    for concat in list(graph):
        if concat.op_type != "Concat" or concat.attributes.get_int("axis") != -1:
            continue
        parts = [_projection(value) for value in concat.inputs]
        if len(parts) < 2 or any(p is None for p in parts) or len({id(p.x) for p in parts}) != 1:
            continue
        if len({p.weight.dtype for p in parts}) != 1 or len({p.bias is None for p in parts}) != 1:
            continue
        name = f"{concat.outputs[0].name}/packed"
        weight = initializer(graph, f"{name}_weight", np.concatenate([p.weight for p in parts], axis=1))
        nodes = [ir.node("MatMul", [parts[0].x, weight], name=f"{name}_matmul")]
        if parts[0].bias is not None:
            bias = initializer(graph, f"{name}_bias", np.concatenate([p.bias for p in parts]))
            nodes.append(ir.node("Add", [nodes[0].outputs[0], bias], name=f"{name}_bias_add"))
        graph.insert_before(concat, nodes)
        take_over(concat.outputs[0], nodes[-1].outputs[0])
        graph.remove(concat, safe=True)
        packed += 1
    return packed
