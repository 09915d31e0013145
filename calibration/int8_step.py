"""The int8 build step: fp32 ONNX → calibration (reused while its inputs are unchanged) → Q/DQ ONNX
and TensorRT calibration cache.

Calibration covers every quantisable tensor, whatever `--exclude` says, so changing the excludes
only redoes the cheap Q/DQ rewrite. Both steps record what they were made from (the fp32 graph
hash, the data digest, the versions below) and are skipped when that matches. Files are written
under temporary names and renamed, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from builder.config import CalibrationConfig
from builder.manifest import write_json_atomic
from builder.model_dir import ModelDir
from builder.progress import note, stage
from calibration.collect import collect_histograms, peak_rss_mib, thresholds_from_histograms
from calibration.entropy import QUANTIZED_BINS, scale_from_threshold
from calibration.errors import CalibrationError
from calibration.feeds import CalibrationSet
from calibration.histogram import DEFAULT_BINS
from calibration.qdq import place, qdq_from_fp32
from calibration.trt_cache import write_cache

CALIBRATOR_VERSION = 1  # bump when histograms or the threshold search change
QDQ_VERSION = 3  # bump when the Q/DQ placement or rewrite changes
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


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def thresholds_from_fp32(
    name: str, fp32: Path, fp32_hash: str, data: CalibrationSet, work: Path
) -> tuple[dict[str, float], dict]:
    """{tensor: |x| threshold} for every quantisable activation, and what they were made from."""
    record = work / f"{name}.calibration.json"
    wanted = {
        "fp32_sha256": fp32_hash,
        "data_sha256": data.digest,
        "calibrator_version": CALIBRATOR_VERSION,
        "method": METHOD,
    }
    previous = _read_json(record)
    if previous and {k: previous.get(k) for k in wanted} == wanted:
        note(f"{name} calibration up to date: {record}")
        return previous["thresholds"], previous
    model = onnx.load(str(fp32), load_external_data=False)
    tensors = list(dict.fromkeys(place(model).candidates.values()))  # raises if none
    del model
    with stage(f"calibrate {name}: {len(tensors)} tensors over {data.description}"):
        histograms, calls = collect_histograms(fp32, tensors, data)
        thresholds = thresholds_from_histograms(histograms)
    note(f"peak memory so far: {peak_rss_mib():.0f} MiB resident")
    payload = wanted | {
        "samples": calls,
        "data": data.description,
        "amax": {name: hist.amax for name, hist in histograms.items()},
        "thresholds": thresholds,
    }
    write_json_atomic(record, payload)
    return thresholds, payload


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
    thresholds, calibration = thresholds_from_fp32(name, fp32, fp32_hash, data, work)
    graph, cache = work / f"{name}.int8.onnx", work / f"{name}.int8.calibration.cache"
    record = work / f"{name}.int8.json"
    wanted = {
        "fp32_sha256": fp32_hash,
        "data_sha256": data.digest,
        "calibrator_version": CALIBRATOR_VERSION,
        "qdq_version": QDQ_VERSION,
        "excludes": list(cfg.excludes),
        "int8_sensitive": cfg.int8_sensitive,
    }
    previous = _read_json(record)
    if graph.is_file() and cache.is_file() and previous and {k: previous.get(k) for k in wanted} == wanted:
        note(f"{name} int8 ONNX up to date: {graph}")
        return Int8Graph(graph, cache, previous["summary"])

    model = onnx.load(str(fp32), load_external_data=False)
    placement = place(model, cfg.excludes, keep_sensitive=not cfg.int8_sensitive)
    del model
    with stage(
        f"write {name} int8 Q/DQ ONNX ({len(placement.quantised)} nodes int8, {len(placement.excluded)} kept float)"
    ):
        tmp = work / f".{graph.name}.tmp"
        try:
            qdq_from_fp32(fp32, thresholds, placement, tmp)
            write_cache(cache, {t: scale_from_threshold(thresholds[t]) for t in placement.tensors})
            os.replace(tmp, graph)
        finally:
            tmp.unlink(missing_ok=True)
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
    }
    write_json_atomic(record, wanted | {"summary": summary})
    return Int8Graph(graph, cache, summary)
