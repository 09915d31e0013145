"""Precision lives in the graph: rewrite an fp32 ONNX decoder to fp16, keeping fragile maths fp32.

Kept in fp32: rotary angles (positions × inverse frequencies reach thousands of radians; fp16 would
lose whole radians), RMSNorm's statistics (Pow/ReduceMean/Sqrt/Reciprocal) and Softmax. The KV
pool and new K/V are fp16 (half the memory); logits stay fp32 for sampling and accuracy.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16

from runtime import decoder_io as io

FP32_OP_TYPES = ("Pow", "ReduceMean", "Sqrt", "Reciprocal", "Softmax", "Cos", "Sin", "Range")
FP32_OUTPUTS = (io.LOGITS,)


def _rope_ancestors(graph: onnx.GraphProto) -> set[str]:
    """Names of all nodes that feed a Cos or Sin (the rotary angle computation)."""
    producer = {output: node for node in graph.node for output in node.output}
    pending = [node for node in graph.node if node.op_type in ("Cos", "Sin")]
    seen: set[str] = set()
    while pending:
        node = pending.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        pending += [producer[name] for name in node.input if name in producer]
    return seen


def _tidy(graph: onnx.GraphProto) -> None:
    """Repair two habits of the converter: it inserts the same Cast twice when one tensor feeds two
    fp32 nodes (identical copies, so keeping one is exact), and appends Casts after their consumers
    (the ONNX checker and TensorRT's parser want topological order)."""
    unique: dict[bytes, onnx.NodeProto] = {}
    for node in graph.node:
        unique.setdefault(node.SerializeToString(), node)
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(unique.values()), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError(f"fp16 graph has a cycle or a dangling input near {pending[0].name}")
        for node in ready:
            available.update(node.output)
        ordered += ready
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)


def fp16_from_fp32(src: Path, dst: Path) -> None:
    model = onnx.load(str(src))
    keep = [node.name for node in model.graph.node if node.op_type in FP32_OP_TYPES]
    keep += sorted(_rope_ancestors(model.graph))
    converted = convert_float_to_float16(
        model,
        keep_io_types=list(FP32_OUTPUTS),
        op_block_list=list(FP32_OP_TYPES),
        node_block_list=keep,
    )
    _tidy(converted.graph)
    onnx.checker.check_model(converted)
    onnx.save(converted, str(dst))
