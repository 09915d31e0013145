"""Run the fp32 graph with ONNX Runtime over calibration feeds and stream activation histograms (and,
for smoothing, per-channel maxima).

The graph is re-saved with the calibrated tensors (the quantisable ops' activation inputs) added
as graph outputs, next to the original so external weight files still resolve; each feed is one
engine call whose outputs are folded into the per-tensor histograms and then dropped, so memory
is one fixed-size histogram per tensor plus one call's activations, whatever the sample count.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from calibration.entropy import entropy_threshold
from calibration.errors import CalibrationError
from calibration.feeds import CalibrationSet
from calibration.histogram import DEFAULT_BINS, AbsHistogram
from runtime.progress import note


def augmented_session(graph: Path, tensors: list[str], threads: int = 0) -> ort.InferenceSession:
    model = onnx.load(str(graph), load_external_data=False)
    present = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    tmp = graph.with_name(f".{graph.stem}.calibration.onnx")
    try:
        onnx.save(model, str(tmp))
        del model
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.intra_op_num_threads = threads
        return ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
    finally:
        tmp.unlink(missing_ok=True)


def activations(
    graph: Path, tensors: list[str], data: CalibrationSet, what: str, remedy: str
) -> Iterator[list[tuple[str, np.ndarray]]]:
    """One engine call per calibration feed: yields [(tensor, value)] for the `tensors` of that
    call (float32, empty values left out), dropped after use so memory stays one call's worth.
    Logs progress as `what`; refuses inf/NaN (saying `remedy`), and tensors empty in every call."""
    session = augmented_session(graph, tensors)
    seen: set[str] = set()
    calls = 0
    for feed in data.feeds(session.get_inputs()):
        values = []
        for name, value in zip(tensors, session.run(tensors, feed), strict=True):
            value = np.asarray(value, np.float32)
            if value.size == 0:
                continue
            if not np.isfinite(value).all():
                raise CalibrationError(f"{name} holds inf or NaN on the calibration data ({what}); {remedy}")
            values.append((name, value))
            seen.add(name)
        yield values
        calls += 1
        if calls % 16 == 0:
            note(f"{what}: {calls} samples")
    missing = [name for name in tensors if name not in seen]
    if missing:
        raise CalibrationError(f"{missing[0]} was empty in every calibration sample; {what} cannot use it")


def collect_histograms(
    graph: Path, tensors: list[str], data: CalibrationSet, bins: int = DEFAULT_BINS
) -> tuple[dict[str, AbsHistogram], int]:
    """Per-tensor |x| histograms over every feed; returns them and the number of engine calls."""
    histograms = {name: AbsHistogram(bins) for name in tensors}
    calls = 0
    for values in activations(graph, tensors, data, "calibration", "build it at fp16 or fp32 instead"):
        for name, value in values:
            histograms[name].update(value, name)
        calls += 1
    return histograms, calls


def collect_channel_amax(
    graph: Path, tensors: list[str], data: CalibrationSet
) -> tuple[dict[str, np.ndarray], int]:
    """Per-tensor max |x| per channel (the last axis, the one a MatMul contracts) over every feed:
    one float32 vector per tensor, whatever the sample count. Returns them and the engine calls."""
    amax: dict[str, np.ndarray] = {}
    calls = 0
    for values in activations(graph, tensors, data, "channel maxima", "build without --smooth-alpha"):
        for name, value in values:
            peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            amax[name] = peak if name not in amax else np.maximum(amax[name], peak)
        calls += 1
    return amax, calls


def thresholds_from_histograms(histograms: dict[str, AbsHistogram]) -> dict[str, float]:
    return {name: entropy_threshold(hist) for name, hist in histograms.items()}


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
