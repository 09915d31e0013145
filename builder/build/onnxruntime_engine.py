"""The ONNX Runtime backend: an engine is the graph after ORT's optimizer, saved to disk.

Saved at the EXTENDED level: its fusions (attention, RMSNorm, GELU, MatMul+Add…) are portable,
while ENABLE_ALL adds layout changes specific to this CPU (re-applied at load instead).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort


def op_counts(graph: Path) -> Counter:
    model = onnx.load(str(graph), load_external_data=False)
    return Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph.node)


def ort_engine_from_onnx(graph: Path, engine: Path) -> dict:
    """Optimize `graph` into `engine`; return the fusion report (node counts before → after)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(engine)
    source, extra = _u8_activations(graph)
    try:
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    finally:
        if source != graph:
            source.unlink(missing_ok=True)
    before, after = op_counts(graph), op_counts(engine)
    changed = {
        op: [before.get(op, 0), after.get(op, 0)]
        for op in sorted(before.keys() | after.keys())
        if before.get(op, 0) != after.get(op, 0)
    }
    return {
        "optimizer": "onnxruntime ORT_ENABLE_EXTENDED",
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
        "changed_op_counts": changed,
        **extra,
    }


def _u8_activations(graph: Path) -> tuple[Path, dict]:
    """Int8 Q/DQ graphs: this CPU's fast int8 kernels take uint8 activations (U8S8), so symmetric
    int8 activations become uint8 with zero point 128, bit-exact (calibration/qdq.py); the
    precision graph itself stays symmetric int8 for TensorRT."""
    if "QuantizeLinear" not in op_counts(graph):
        return graph, {}
    from calibration.qdq import u8_activations

    model = onnx.load(str(graph), load_external_data=False)
    changed = u8_activations(model)
    source = graph.with_name(f".{graph.stem}.u8s8.onnx")  # beside any external weight files
    onnx.save(model, str(source))
    return source, {"activation_qdq": f"int8 zero point 0 → uint8 zero point 128 ({changed} tensors)"}
