"""Model dir → fp32 ONNX → precision ONNX → engine, each step skipped when its inputs are unchanged.

Steps are small functions named <Target>From<Source>; the backend is a choice at the last step.
Each writes to a temporary name and renames, so an interrupted build leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import onnx

from builder.build.onnxruntime_engine import ort_engine_from_onnx
from builder.build.tensorrt_engine import require_tensorrt, tensorrt_available, trt_engine_from_onnx
from builder.config import Backend, BuildConfig, ExportConfig, Precision
from builder.errors import ExportError
from builder.manifest import EngineEntry, Manifest, TensorSpec, sha256_file, write_json_atomic
from builder.model_dir import ModelDir
from builder.progress import note, stage
from runtime.compat import build_tool_versions, runtime_versions
from runtime.errors import EngineDirError

COMPONENT = "text_decoder"
EXPORT_FORMAT = 2  # bump when the exported graph changes, so builds redo stale exports

EngineStep = Callable[[Path, Path], dict]
ENGINE_STEPS: dict[Backend, tuple[EngineStep, str]] = {
    Backend.onnxruntime: (ort_engine_from_onnx, "onnx"),
    Backend.tensorrt: (trt_engine_from_onnx, "plan"),
}


def resolve_backend(requested: Backend) -> Backend:
    if requested is not Backend.auto:
        return requested
    import torch

    return Backend.tensorrt if tensorrt_available() and torch.cuda.is_available() else Backend.onnxruntime


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def fp32_onnx_from_model(model_dir: ModelDir, cfg: ExportConfig, work: Path, source_hash: str) -> Path:
    """Export and validate the fp32 text decoder, unless an export of the same inputs exists."""
    graph, record = work / f"{COMPONENT}.fp32.onnx", work / f"{COMPONENT}.fp32.export.json"
    wanted = {"format": EXPORT_FORMAT, "source_hash": source_hash, "config": cfg.as_dict()}
    previous = _read_json(record)
    if graph.is_file() and previous and {k: previous.get(k) for k in wanted} == wanted:
        note(f"fp32 ONNX up to date: {graph}")
        return graph

    from builder.export.paged_decoder import PagedDecoder
    from builder.export.text_decoder import export_text_decoder, validate_text_decoder

    with stage(f"load {model_dir.path}"):
        model = model_dir.load()
        decoder = PagedDecoder(model, model_dir.family).eval()
    tmp = work / f".{graph.name}.tmp"
    with stage(f"export {COMPONENT} → ONNX (batch 1–{cfg.max_batch}, ≤{cfg.max_seq_len} tokens)"):
        export_text_decoder(decoder, cfg, tmp)
    with stage("validate ONNX Runtime vs PyTorch (batch 1 and 8)"):
        report = validate_text_decoder(decoder, model, tmp, cfg)
        for line in report.lines():
            note(line)
        report.save(work / f"{COMPONENT}.fp32.validation.json")
    if not report.passed:
        tmp.unlink()
        raise ExportError(
            f"exported {COMPONENT} disagrees with PyTorch beyond tolerance (see "
            f"{work / (COMPONENT + '.fp32.validation.json')}); this is a bug, please report it"
        )
    os.replace(tmp, graph)
    write_json_atomic(record, wanted | {"tools": build_tool_versions()})
    return graph


def precision_onnx_from_fp32(fp32: Path, fp32_hash: str, precision: Precision, work: Path) -> Path:
    if precision is Precision.fp32:
        return fp32
    graph, record = work / f"{COMPONENT}.{precision.value}.onnx", work / f"{COMPONENT}.{precision.value}.json"
    from builder.precision import PASS_VERSION, fp16_from_fp32

    wanted = {"fp32_sha256": fp32_hash, "pass_version": PASS_VERSION}
    if graph.is_file() and _read_json(record) == wanted:
        note(f"{precision.value} ONNX up to date: {graph}")
        return graph

    with stage(f"rewrite {COMPONENT} to {precision.value}"):
        tmp = work / f".{graph.name}.tmp"
        fp16_from_fp32(fp32, tmp)
        os.replace(tmp, graph)
        write_json_atomic(record, wanted)
    return graph


def _tensor_specs(values) -> list[TensorSpec]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        specs.append(TensorSpec(value.name, dtype, shape))
    return specs


def engine_from_onnx(
    graph: Path, graph_hash: str, precision: Precision, backend: Backend, out: Path, manifest: Manifest
) -> None:
    step, suffix = ENGINE_STEPS[backend]
    name = f"{COMPONENT}.{precision.value}.{suffix}"
    current = manifest.entry(COMPONENT, precision.value)
    if (
        current
        and current.graph_sha256 == graph_hash
        and current.backend == backend.value
        and (out / current.file).is_file()
        and current.tools == runtime_versions(backend.value)
    ):
        note(f"{precision.value} engine up to date: {out / current.file}")
        return
    with stage(f"build {COMPONENT} {precision.value} engine ({backend.value})"):
        start = time.perf_counter()
        tmp = out / f".{name}.tmp"
        report = step(graph, tmp)
        os.replace(tmp, out / name)
        model = onnx.load(str(graph), load_external_data=False)
        manifest.put(
            EngineEntry(
                component=COMPONENT,
                precision=precision.value,
                backend=backend.value,
                file=name,
                sha256=sha256_file(out / name),
                graph_sha256=graph_hash,
                inputs=_tensor_specs(model.graph.input),
                outputs=_tensor_specs(model.graph.output),
                build_seconds=round(time.perf_counter() - start, 2),
                tools=runtime_versions(backend.value),
                report=report,
            )
        )
        if "changed_op_counts" in report:
            note(f"graph optimizer: {report['nodes_before']} → {report['nodes_after']} nodes")
            for op, (before, after) in report["changed_op_counts"].items():
                note(f"  {op:<40} {before:>5} → {after}")


def _copy_tokenizer(model_dir: ModelDir, out: Path) -> None:
    target = out / "tokenizer"
    target.mkdir(exist_ok=True)
    for file in model_dir.side_files():
        shutil.copy2(file, target / file.name)


def build(model_dir: ModelDir, cfg: BuildConfig, out: Path, work: Path) -> Manifest:
    backend = resolve_backend(cfg.backend)
    if backend is Backend.tensorrt:
        require_tensorrt()  # before minutes of export, not after
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    with stage(f"hash {model_dir.path}"):
        source_hash = model_dir.source_hash()
    shape = model_dir.family.shape(model_dir.load_config())
    export_cfg = cfg.export
    fp32 = fp32_onnx_from_model(model_dir, export_cfg, work, source_hash)
    try:
        manifest = Manifest.load(out)
        if manifest.model.get("source_hash") != source_hash:
            manifest.engines.clear()
    except EngineDirError:  # no manifest yet, or one this version cannot read: start afresh
        manifest = Manifest(model={}, decoder={}, axes={})
    manifest.build_tools = build_tool_versions()
    manifest.model = {
        "name": model_dir.name,
        "source_dir": str(model_dir.path),
        "source_hash": source_hash,
        "model_type": model_dir.model_type,
        "family": model_dir.family.name,
    }
    manifest.decoder = {
        **shape.__dict__,
        "position_rank": model_dir.family.position_rank,
        "max_batch": export_cfg.max_batch,
        "max_seq_len": export_cfg.max_seq_len,
        "block_size": export_cfg.block_size,
    }
    manifest.axes = {
        "batch": [1, export_cfg.max_batch],
        "seq": [1, export_cfg.max_seq_len],
        "blocks": [1, export_cfg.max_blocks_per_seq],
        "logit_positions": [1, export_cfg.max_seq_len],
    }
    fp32_hash = sha256_file(fp32)  # hundreds of MB: hash once, use for every precision
    for precision in cfg.precisions:
        graph = precision_onnx_from_fp32(fp32, fp32_hash, precision, work)
        graph_hash = fp32_hash if graph == fp32 else sha256_file(graph)
        engine_from_onnx(graph, graph_hash, precision, backend, out, manifest)
    _copy_tokenizer(model_dir, out)
    manifest.save(out)
    return manifest
