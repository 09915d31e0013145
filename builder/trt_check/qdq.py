"""Q/DQ placement that TensorRT's explicit quantization can fuse.

TensorRT quantizes symmetrically to signed INT8 (zero point 0), takes constant scales, allows
per-channel scales only on weights along the output-channel axis, and fuses a DequantizeLinear
into the MatMul/Gemm/Conv it feeds when every data input of that op is dequantized. A Q must be
followed by DQ (a pair); a DQ reads a Q or a constant (pre-quantized weights).

Weight-only quantization (WoQ) is the other pattern TensorRT fuses: a DQ on a constant INT8 (per
channel) or INT4 (per block, `block_size`, opset 21) weight feeding the weight input of a MatMul or
Gemm whose activation stays float, directly or through a Transpose (a tied lm_head reading the
embedding table); the same DQ may also feed the embedding Gather. Block quantization needs a
constant INT4 weight of rank 2 blocked along the axis the matmul contracts, and a constant scale
of the weight's rank.
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
        if _weight_only(node, index, dequantized):
            continue
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
    """`name` is a DequantizeLinear's output, directly or through Transposes."""
    producer = index.producer.get(name)
    while producer is not None and producer.op_type == "Transpose":
        producer = index.producer.get(producer.input[0])
    return producer is not None and producer.op_type == "DequantizeLinear"


def _dq_of(index, name: str) -> onnx.NodeProto | None:
    producer = index.producer.get(name)
    while producer is not None and producer.op_type == "Transpose":
        producer = index.producer.get(producer.input[0])
    return producer if producer is not None and producer.op_type == "DequantizeLinear" else None


def _weight_only(node: onnx.NodeProto, index, dequantized: list[bool]) -> bool:
    """MatMul/Gemm whose only dequantized input is a constant weight (input 1): WoQ."""
    if node.op_type not in ("MatMul", "Gemm") or dequantized[:2] != [False, True]:
        return False
    dq = _dq_of(index, node.input[1])
    return dq is not None and index.is_const(dq.input[0])


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
    if _block_size(node):
        yield from _check_block(node, index, error)
    elif scale_size is not None and scale_size > 1:
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


def _block_size(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "block_size"), 0)


def _consumers_through_transpose(index, tensor: str, axis: int) -> Iterator[tuple[onnx.NodeProto, int, int]]:
    """(consumer, input position, the DQ axis as that consumer sees it), looking through Transposes."""
    for consumer in index.consumers.get(tensor, []):
        if consumer.op_type == "Transpose":
            perm = next((list(a.ints) for a in consumer.attribute if a.name == "perm"), None)
            seen = perm.index(axis) if perm and axis in perm else axis
            yield from _consumers_through_transpose(index, consumer.output[0], seen)
            continue
        for position, name in enumerate(consumer.input):
            if name == tensor:
                yield consumer, position, axis


def _check_weight_axis(node: onnx.NodeProto, index, error) -> Iterator[Finding]:
    if node.op_type != "DequantizeLinear":
        return
    weight = index.initializers.get(node.input[0])
    rank = len(weight.dims) if weight is not None else 2
    for consumer, position, axis in _consumers_through_transpose(index, node.output[0], _axis(node)):
        allowed = _weight_axis(consumer, position, rank)
        if allowed is not None and axis not in allowed:
            yield error(
                f"per-channel axis {_axis(node)} on the weight of {consumer.op_type} "
                f"'{consumer.name}'; TensorRT needs the output-channel axis {max(allowed)}"
            )


def _check_block(node: onnx.NodeProto, index, error) -> Iterator[Finding]:
    """Block (per-group) quantization: a constant INT4 weight of rank 2, blocked along the axis the
    consuming MatMul/Gemm contracts, with a constant scale of the same rank."""
    block = _block_size(node)
    if node.op_type != "DequantizeLinear":
        yield error(f"block_size {block} on QuantizeLinear: TensorRT block-quantizes weights (DQ only)")
        return
    weight = index.initializers.get(node.input[0])
    if weight is None or not index.is_const(node.input[0]):
        yield error(f"block quantization of '{node.input[0]}', which is not a constant weight")
        return
    kind = onnx.TensorProto.DataType.Name(weight.data_type)
    if kind not in ("INT4", "FLOAT4E2M1"):
        yield error(f"block quantization of a {kind} weight; TensorRT blocks INT4 (and FP4) weights only")
    scale = index.initializers.get(node.input[1])
    if len(weight.dims) != 2 or scale is None or len(scale.dims) != 2:
        yield error("block quantization needs a rank-2 weight and a rank-2 scale")
        return
    axis = _axis(node) % 2
    if weight.dims[axis] % block:
        yield Finding(
            "warning",
            "qdq",
            node.name or node.output[0],
            node.op_type,
            f"blocked axis of length {weight.dims[axis]} is not a multiple of block_size {block}: "
            "the last block is short, which TensorRT may reject; pad the weight or pick another block size",
        )
    for consumer, position, seen in _consumers_through_transpose(index, node.output[0], axis):
        if consumer.op_type == "Gather" and position == 0:
            continue  # an embedding lookup of the same (tied) table
        contracted = _weight_axis(consumer, position, 2)
        if contracted is None:
            yield error(
                f"block-quantized weight feeds {consumer.op_type} '{consumer.name}', not a MatMul/Gemm weight"
            )
        elif seen in contracted:
            yield error(
                f"blocks along axis {seen} of the weight of {consumer.op_type} '{consumer.name}', its output "
                "channels; TensorRT blocks along the contracted (input-channel) axis"
            )
