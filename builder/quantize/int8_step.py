"""The int8 build step: fp32 ONNX → [smoothed fp32 ONNX] → calibration (reused while its inputs are
unchanged) → Q/DQ ONNX and TensorRT calibration cache.

With `smooth_alpha` > 0 (the default) the decoders' q/k/v projections (with `int8_sensitive`,
the MLP down projections too) are smoothed first (per-channel input maxima over the calibration
data, then calibration/smoothing.py's exact rewrite), the histograms are taken on the smoothed
graph, and the smoothed projections are quantised from it.

Calibration covers every quantisable tensor, whatever `--exclude` says, so changing the excludes
only redoes the cheap Q/DQ rewrite. Both steps record what they were made from (the fp32 graph
hash, the data digest, the versions below) and are skipped when that matches. Files are written
under temporary names and renamed, so a failure leaves nothing half-written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from builder.config import CalibrationConfig
from builder.model_dir import ModelDir
from calibration.collect import (
    collect_channel_amax,
    collect_histograms,
    peak_rss_mib,
    thresholds_from_histograms,
)
from calibration.entropy import QUANTIZED_BINS, scale_from_threshold
from calibration.errors import CalibrationError
from calibration.feeds import CalibrationSet
from calibration.histogram import DEFAULT_BINS
from calibration.qdq import place, qdq_from_fp32
from calibration.smoothing import DOWN, QKV, SmoothPlan, smoothed_from_fp32, smoothing_plan
from calibration.trt_cache import write_cache
from calibration.weight_only import INT8, weight_only
from runtime.build_records import StepRecord
from runtime.onnx_files import graph_digest, save_graph, staged_graph
from runtime.progress import note, stage

CALIBRATOR_VERSION = 1  # bump when histograms or the threshold search change
QDQ_VERSION = 6  # bump when the Q/DQ placement or rewrite changes
SMOOTH_VERSION = 1  # bump when the channel maxima, the scale formula or the smoothing rewrite change
SMOOTH_METHOD = (
    "SmoothQuant: s_j = max|X_j|^α / max|W_j,:|^(1−α); 1/s folded into the norm weight or up projection"
)
METHOD = (
    f"entropy: TensorRT EntropyCalibration2 semantics ({DEFAULT_BINS}-bin |x| histograms, "
    f"{QUANTIZED_BINS} levels, threshold minimising KL)"
)


@dataclass(frozen=True)
class Int8Graph:
    graph: Path  # the Q/DQ ONNX
    cache: Path  # TensorRT calibration cache (scales of the Q/DQ activations)
    summary: dict  # for the manifest entry's `calibration`


def calibration_set(component, model_dir: ModelDir, cfg: CalibrationConfig) -> CalibrationSet:
    """Read and check the component's calibration data (fast; before any minutes-long step)."""
    if component.calibration is None:
        raise CalibrationError(f"{component.name} has no int8 calibration yet; build it at fp16 or fp32")
    return component.calibration(model_dir, cfg)


def thresholds_from_fp32(
    name: str, fp32: Path, fp32_hash: str, data: CalibrationSet, work: Path, record: Path | None = None
) -> tuple[dict[str, float], dict]:
    """{tensor: |x| threshold} for every quantisable activation, and what they were made from."""
    wanted = {
        "fp32_sha256": fp32_hash,
        "data_sha256": data.digest,
        "calibrator_version": CALIBRATOR_VERSION,
        "method": METHOD,
    }
    step = StepRecord(record or work / f"{name}.calibration.json", wanted)
    if (previous := step.current()) is not None:
        note(f"{name} calibration up to date: {step.path}")
        return previous["thresholds"], previous
    model = onnx.load(str(fp32), load_external_data=False)
    tensors = list(dict.fromkeys(place(model).candidates.values()))  # raises if none
    del model
    with step.redo() as payload:
        with stage(f"calibrate {name}: {len(tensors)} tensors over {data.description}"):
            histograms, calls = collect_histograms(fp32, tensors, data)
            thresholds = thresholds_from_histograms(histograms)
        note(f"peak memory so far: {peak_rss_mib():.0f} MiB resident")
        payload |= {
            "samples": calls,
            "data": data.description,
            "amax": {name: hist.amax for name, hist in histograms.items()},
            "thresholds": thresholds,
        }
    return thresholds, payload


@dataclass(frozen=True)
class SmoothedGraph:
    graph: Path  # the smoothed fp32 ONNX (numerically the fp32 graph)
    sha256: str
    smoothed: tuple[str, ...]  # sensitive projections smoothed (quantisable now)
    summary: dict  # for the manifest's `calibration.smoothing`


def channel_amax_from_fp32(
    name: str, fp32: Path, fp32_hash: str, data: CalibrationSet, plan: SmoothPlan, work: Path
) -> dict[str, np.ndarray]:
    """Per-channel max |x| of the smoothing sites' inputs; kept in `<name>.channel_amax.json` and
    reused (whatever α) while the fp32 graph and the data are unchanged."""
    wanted = {"fp32_sha256": fp32_hash, "data_sha256": data.digest, "smooth_version": SMOOTH_VERSION}
    step = StepRecord(work / f"{name}.channel_amax.json", wanted)
    previous = step.current()
    if previous is not None and set(plan.tensors) <= set(previous["amax"]):
        note(f"{name} channel maxima up to date: {step.path}")
        return {t: np.asarray(previous["amax"][t], np.float32) for t in plan.tensors}
    with step.redo() as record:
        with stage(f"channel maxima {name}: {len(plan.tensors)} tensors over {data.description}"):
            amax, calls = collect_channel_amax(fp32, plan.tensors, data)
        # float32 → Python float → float32 is exact, so the JSON keeps the bits
        record |= {"samples": calls, "amax": {t: v.tolist() for t, v in amax.items()}}
    return amax


def smoothed_fp32(
    name: str,
    fp32: Path,
    fp32_hash: str,
    data: CalibrationSet,
    alpha: float,
    work: Path,
    kinds: tuple[str, ...] = (QKV, DOWN),
) -> SmoothedGraph | None:
    """The fp32 graph with the sensitive projections smoothed (`<name>.fp32.smooth.onnx`), reused
    while the fp32 graph, the data, α and SMOOTH_VERSION are unchanged; None if nothing matched."""
    graph = work / f"{name}.fp32.smooth.onnx"
    wanted = {
        "fp32_sha256": fp32_hash,
        "data_sha256": data.digest,
        "smooth_version": SMOOTH_VERSION,
        "alpha": alpha,
        "kinds": list(kinds),
    }
    step = StepRecord(work / f"{name}.fp32.smooth.json", wanted)
    if (previous := step.current(graph)) is not None:
        note(f"{name} smoothed fp32 ONNX up to date: {graph}")
        summary = previous["summary"]
        return SmoothedGraph(graph, previous["sha256"], tuple(summary["smoothed_nodes"]), summary)
    plan = smoothing_plan(onnx.load(str(fp32), load_external_data=False), kinds)
    for kind in (QKV, DOWN):
        reasons = [why for why in plan.unmatched.values() if why.startswith(kind)]
        if reasons:
            note(f"{name}: {len(reasons)} nodes stay float; e.g. {reasons[0]}")
    if not plan.targets:  # an encoder, or a decoder none of whose patterns matched
        note(f"{name}: nothing to smooth; calibrating the fp32 graph as it is")
        return None
    amax = channel_amax_from_fp32(name, fp32, fp32_hash, data, plan, work)
    label = f"smooth {name} (α = {alpha}): {len(plan.smoothed)} projections at {len(plan.targets)} sites"
    with step.redo() as record:
        with stage(label):
            sites = smoothed_from_fp32(fp32, graph, plan, amax, alpha)
        summary = {
            "method": SMOOTH_METHOD,
            "alpha": alpha,
            "smoothed_nodes": list(plan.smoothed),
            "unmatched_nodes": plan.unmatched,
            "sites": sites,
        }
        digest = graph_digest(graph)
        record |= {"sha256": digest, "summary": summary}
    return SmoothedGraph(graph, digest, plan.smoothed, summary)


def weight_only_int8(graph: Path) -> dict:
    """Give the nodes the Q/DQ rewrite left float int8 weights (W8A16), in place; the tied
    embedding table is stored once (calibration/weight_only.py)."""
    model = onnx.load(str(graph))
    report = weight_only(model, INT8)
    save_graph(model, graph)
    return report.as_dict()


def int8_onnx_from_fp32(
    component,
    model_dir: ModelDir,
    fp32: Path,
    fp32_hash: str,
    cfg: CalibrationConfig,
    work: Path,
    data: CalibrationSet | None = None,
) -> Int8Graph:
    name = component.name
    data = data or calibration_set(component, model_dir, cfg)
    smoothing = None
    source, source_hash, calibration_record = fp32, fp32_hash, None
    if cfg.smooth_alpha > 0:
        # Down projections' outliers are per token, which moving scale between channels cannot
        # fix (SmolLM2-135M: perplexity ×2 with them smoothed and int8): smoothed only on request.
        kinds = (QKV, DOWN) if cfg.int8_sensitive else (QKV,)
        smoothing = smoothed_fp32(name, fp32, fp32_hash, data, cfg.smooth_alpha, work, kinds)
    if smoothing is not None:
        source, source_hash = smoothing.graph, smoothing.sha256
        calibration_record = work / f"{name}.fp32.smooth.calibration.json"
    thresholds, calibration = thresholds_from_fp32(name, source, source_hash, data, work, calibration_record)
    graph, cache = work / f"{name}.int8.onnx", work / f"{name}.int8.calibration.cache"
    wanted = {
        "fp32_sha256": fp32_hash,
        "data_sha256": data.digest,
        "calibrator_version": CALIBRATOR_VERSION,
        "qdq_version": QDQ_VERSION,
        "excludes": list(cfg.excludes),
        "int8_sensitive": cfg.int8_sensitive,
        # None when off, so records written before smoothing existed still match
        "smoothing": None
        if smoothing is None
        else {
            "alpha": cfg.smooth_alpha,
            "smooth_version": SMOOTH_VERSION,
            "smoothed_sha256": smoothing.sha256,
        },
    }
    step = StepRecord(work / f"{name}.int8.json", wanted)
    if (previous := step.current(graph)) is not None and cache.is_file():
        note(f"{name} int8 ONNX up to date: {graph}")
        return Int8Graph(graph, cache, previous["summary"])

    model = onnx.load(str(source), load_external_data=False)
    placement = place(
        model,
        cfg.excludes,
        keep_sensitive=not cfg.int8_sensitive,
        smoothed=smoothing.smoothed if smoothing else (),
    )
    del model
    label = f"write {name} int8 Q/DQ ONNX ({len(placement.quantised)} nodes int8, {len(placement.excluded)} kept float)"
    with step.redo() as record:  # no record until graph and cache are whole
        with stage(label), staged_graph(graph) as staged:
            qdq_from_fp32(source, thresholds, placement, staged)
            weights = weight_only_int8(staged)
            write_cache(cache, {t: scale_from_threshold(thresholds[t]) for t in placement.tensors})
        summary = {
            "method": METHOD,
            "samples": calibration["samples"],
            "data": calibration["data"],
            "data_sha256": data.digest,
            "cache_file": cache.name,
            "activations": "int8 per-tensor symmetric (scale = threshold / 127)",
            "weights": "int8 per-channel symmetric",
            "quantized_nodes": len(placement.quantised),
            "excluded_nodes": placement.excluded,
            "weight_only": "int8 per-channel symmetric weights, float activations, on every excluded "
            "MatMul/Gemm with a constant weight (lm_head included; a tied embedding stored once)",
            **weights,
        }
        if smoothing is not None:
            summary["smoothing"] = smoothing.summary
        record["summary"] = summary
    return Int8Graph(graph, cache, summary)
