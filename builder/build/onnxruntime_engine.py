"""The ONNX Runtime backend: an engine is the precision graph rewritten into ORT's fused operators
(text decoders, builder/build/ort_fusion/), then through ORT's own optimizer, saved to disk.

Saved at the EXTENDED level: its fusions (SiLU → QuickGelu, MatMul+Add…) are portable, while
ENABLE_ALL adds layout changes specific to this CPU (re-applied at load instead). A fused decoder
is compared with the graph it came from before it is kept (ort_fusion/compare.py).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort

from builder.errors import BuildError
from runtime import decoder_io as io
from runtime.onnx_files import EXTERNAL_TENSOR_MIN_BYTES, data_file_name, needs_external_data
from runtime.progress import note, stage

# Fused fp32 maths differs from the trace's only in summation order; quantised engines also
# quantise activations inside MatMulNBits (accuracy_level 4, per block of K): measured cosine
# 0.9997–0.99999 on SmolLM2 int8/int4 at block 32, 0.989 on new_kv at int4 block 128. A fusion
# mistake (a wrong mask, scale or layout) measured 0.15–0.8.
MIN_COSINE = {"exact": 0.99999, "quantised": 0.98}


def op_counts(graph: Path) -> Counter:
    model = onnx.load(str(graph), load_external_data=False)
    return Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph.node)


def _is_decoder(model: onnx.ModelProto) -> bool:
    """The text decoder, or one of its pipeline stages."""
    names = {i.name for i in model.graph.input}
    return io.PAST_LENS in names and any(o.name == io.NEW_KV for o in model.graph.output)


def ort_engine_from_onnx(graph: Path, engine: Path) -> dict:
    """Fuse (decoders) and optimize `graph` into `engine`; return the fusion report."""
    header = onnx.load(str(graph), load_external_data=False)
    large = needs_external_data(header)
    decoder = _is_decoder(header)
    layers = sum(1 for i in header.graph.input if i.name.startswith("key_cache.")) if decoder else 0
    del header
    report: dict = {}
    with tempfile.TemporaryDirectory(dir=engine.parent, prefix=".ort.") as scratch:
        source = graph
        if decoder:
            source = Path(scratch) / "fused.onnx"
            report |= _fuse(graph, source, large)
        else:
            source, extra = _u8_activations(graph)
            report |= extra
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(engine)
        if large:  # weights beside the engine, as the graph has them
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", data_file_name(engine)
            )
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes",
                str(EXTERNAL_TENSOR_MIN_BYTES),
            )
        try:
            ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        finally:
            if source.parent == graph.parent and source != graph:
                source.unlink(missing_ok=True)
    before, after = op_counts(graph), op_counts(engine)
    report |= {
        "optimizer": "onnxruntime ORT_ENABLE_EXTENDED"
        + (" after autoglm-trt/onnxscript fusions" if decoder else ""),
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
        "changed_op_counts": {
            op: [before.get(op, 0), after.get(op, 0)]
            for op in sorted(before.keys() | after.keys())
            if before.get(op, 0) != after.get(op, 0)
        },
    }
    if decoder:
        report["layers"] = layers
        report["nodes_per_layer"] = [
            round(sum(before.values()) / layers, 1),
            round(sum(after.values()) / layers, 1),
        ]
        report["validation"] = _validate(graph, engine, quantised=report.get("quantised", False))
    return report


def _fuse(graph: Path, out: Path, large: bool) -> dict:
    import onnx_ir as ir

    from builder.build.ort_fusion import fuse_decoder

    with stage(f"fuse {graph.name} into ONNX Runtime operators"):
        model = ir.load(str(graph))
        quantised = any(n.op_type == "DequantizeLinear" for n in model.graph)
        fusion = fuse_decoder(model)
        ir.save(model, str(out), external_data=data_file_name(out) if large else None)
    for name, count in fusion.counts.items():
        note(f"  {name:<52} {count:>4}  ({fusion.source[name]})")
    return {"fusions": fusion.counts, "fusion_sources": fusion.source, "quantised": quantised}


def _validate(graph: Path, engine: Path, quantised: bool) -> dict:
    from builder.build.ort_fusion.compare import as_dicts, compare_engine

    min_cosine = MIN_COSINE["quantised" if quantised else "exact"]
    with stage(f"compare the fused engine with {graph.name}"):
        checks = compare_engine(graph, engine, min_cosine)
    for check in checks:
        note(f"  {check.line()}")
    if not all(check.passed for check in checks):
        failed = next(c for c in checks if not c.passed)
        raise BuildError(
            f"the fused {engine.name} disagrees with {graph.name} ({failed.case} {failed.output}: cosine "
            f"{failed.cosine:.6f} < {min_cosine}); this is a bug, please report it"
        )
    return {"reference": graph.name, "min_cosine": min_cosine, "checks": as_dicts(checks)}


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
