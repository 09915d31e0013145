"""Q/DQ placement that TensorRT's explicit quantization can fuse.

TensorRT quantizes symmetrically to signed INT8 (zero point 0), takes constant scales, allows
per-channel scales only on weights along the output-channel axis, and fuses a DequantizeLinear
into the MatMul/Gemm/Conv it feeds when every data input of that op is dequantized. A Q must be
followed by DQ (a pair); a DQ reads a Q or a constant (pre-quantized weights).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from builder.trt_check.findings import Finding

QUANTIZABLE = {"MatMul": (0, 1), "Gemm": (0, 1), "Conv": (0, 1), "ConvTranspose": (0, 1)}
# Ops TensorRT moves Q/DQ across or fuses with, so a DQ feeding them is not left dangling.
PROPAGATE = frozenset({"Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Reshape", "Transpose",
                       "Squeeze", "Unsqueeze", "Slice", "Gather", "Flatten", "Relu", "Sigmoid", "Mul",
                       "Softmax", "Split", "QuantizeLinear"})  # fmt: skip


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _size(index, name: str) -> int | None:
    tensor = index.initializers.get(name)
    return int(np.prod(tensor.dims)) if tensor is not None else None


def _weight_axis(consumer: onnx.NodeProto, position: int, rank: int) -> set[int] | None:
    """The output-channel axis of a weight feeding `consumer` at input `position`."""
    if consumer.op_type == "MatMul" and position == 1:
        return {rank - 1, -1}
    if consumer.op_type == "Gemm" and position == 1:
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return {0, -2} if trans_b else {1, -1}
    if consumer.op_type == "Conv" and position == 1:
        return {0}
    if consumer.op_type == "ConvTranspose" and position == 1:
        return {1}
    return None


def check(index) -> Iterator[Finding]:
    for node in index.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not node.domain:
            yield from _check_qdq_node(node, index)
    for node in index.graph.node:
        inputs = QUANTIZABLE.get(node.op_type)
        if inputs is None or node.domain:
            continue
        dequantized = [_from_dq(index, node.input[i]) for i in inputs if i < len(node.input)]
        if any(dequantized) and not all(dequantized):
            name = node.name or node.output[0]
            missing = [node.input[i] for i, dq in zip(inputs, dequantized, strict=False) if not dq]
            yield Finding(
                "error",
                "qdq",
                name,
                node.op_type,
                f"only some data inputs are dequantized "
                f"({', '.join(missing)} is not): TensorRT cannot run it in INT8 and leaves the DQ unfused; "
                "quantize both inputs (activation and weight) or neither",
            )


def _from_dq(index, name: str) -> bool:
    producer = index.producer.get(name)
    return producer is not None and producer.op_type == "DequantizeLinear"


def _check_qdq_node(node: onnx.NodeProto, index) -> Iterator[Finding]:
    name, op = node.name or node.output[0], node.op_type

    def error(message: str) -> Finding:
        return Finding("error", "qdq", name, op, message)

    scale = node.input[1] if len(node.input) > 1 else ""
    if not index.is_const(scale):
        yield error(f"scale '{scale}' is computed at run time; TensorRT needs a constant scale")
    zero_point = node.input[2] if len(node.input) > 2 else ""
    if zero_point:
        zp_type = index.dtype(zero_point)
        if zp_type in ("UINT8", "UINT16", "INT16", "UINT4"):
            yield error(
                f"zero point '{zero_point}' is {zp_type}: TensorRT quantizes to signed INT8 only "
                "(symmetric); an asymmetric uint8 activation scheme cannot be imported"
            )
        tensor = index.initializers.get(zero_point)
        if tensor is not None and tensor.data_location != onnx.TensorProto.EXTERNAL:
            if np.any(numpy_helper.to_array(tensor) != 0):
                yield error(f"zero point '{zero_point}' is not 0; TensorRT requires zero points of 0")
        elif tensor is None:
            yield error(f"zero point '{zero_point}' is not a constant")
    quantized = node.input[0]
    scale_size = _size(index, scale)
    if scale_size is not None and scale_size > 1:
        if not index.is_const(quantized) and not (op == "DequantizeLinear" and _q_of_const(index, quantized)):
            yield error(
                f"per-channel scale ({scale_size} values) on activation '{quantized}'; TensorRT takes "
                "per-channel scales on weights only, per-tensor scales on activations"
            )
        else:
            yield from _check_weight_axis(node, index, error)
    if op == "QuantizeLinear":
        consumers = index.consumers.get(node.output[0], [])
        if not consumers or any(c.op_type != "DequantizeLinear" for c in consumers):
            yield error(
                f"output '{node.output[0]}' is not consumed only by DequantizeLinear; TensorRT needs "
                "Q/DQ pairs"
            )
    else:
        producer = index.producer.get(quantized)
        from_q = producer is not None and producer.op_type == "QuantizeLinear"
        if not from_q and not index.is_const(quantized):
            yield error(
                f"input '{quantized}' comes from {producer.op_type if producer else 'a graph input'}, "
                "not from QuantizeLinear or a constant weight"
            )
        consumers = index.consumers.get(node.output[0], [])
        if consumers and not any(c.op_type in QUANTIZABLE or c.op_type in PROPAGATE for c in consumers):
            kinds = sorted({c.op_type for c in consumers})
            yield Finding(
                "warning",
                "qdq",
                name,
                op,
                f"feeds only {', '.join(kinds)}: no INT8 kernel can "
                "absorb it, so TensorRT runs the dequantized value in higher precision",
            )


def _q_of_const(index, name: str) -> bool:
    producer = index.producer.get(name)
    return producer is not None and producer.op_type == "QuantizeLinear" and index.is_const(producer.input[0])


def _check_weight_axis(node: onnx.NodeProto, index, error) -> Iterator[Finding]:
    if node.op_type != "DequantizeLinear":
        return
    weight = index.initializers.get(node.input[0])
    rank = len(weight.dims) if weight is not None else 2
    for consumer in index.consumers.get(node.output[0], []):
        for position, name in enumerate(consumer.input):
            if name != node.output[0]:
                continue
            allowed = _weight_axis(consumer, position, rank)
            if allowed is not None and _axis(node) not in allowed:
                yield error(
                    f"per-channel axis {_axis(node)} on the weight of {consumer.op_type} "
                    f"'{consumer.name}'; TensorRT needs the output-channel axis {max(allowed)}"
                )
