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
    ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
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
    }
