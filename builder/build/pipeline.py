"""Model dir → fp32 ONNX → precision ONNX → engine, each step skipped when its inputs are unchanged.

Steps are small functions named <Target>From<Source>; the backend is a choice at the last step.
Each writes to a temporary name and renames, so an interrupted build leaves nothing half-written,
and records what it was made from last (runtime/build_records.py).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import onnx

from builder.build.components import Component, components_for
from builder.build.onnxruntime_engine import ort_engine_from_onnx
from builder.build.tensorrt_engine import (
    require_tensorrt,
    tensorrt_available,
    trt_engine_from_onnx,
    trt_step_options,
)
from builder.config import Backend, BuildConfig, ExportConfig, Precision
from builder.errors import ExportError
from builder.model_dir import ModelDir
from builder.trt_check import check_graph
from builder.trt_check.report import print_reports, raise_on_failure
from runtime.build_records import StepRecord
from runtime.compat import build_tool_versions, runtime_versions
from runtime.engine_files import record_verified
from runtime.engine_loader import expected_files
from runtime.errors import EngineDirError
from runtime.manifest import EngineEntry, Manifest, TensorSpec
from runtime.onnx_files import graph_digest, model_data_files, sha256_file, staged_graph
from runtime.progress import note, stage

EngineStep = Callable[[Path, Path], dict]
ENGINE_STEPS: dict[Backend, tuple[EngineStep, str]] = {
    Backend.onnxruntime: (ort_engine_from_onnx, "onnx"),
    Backend.tensorrt: (trt_engine_from_onnx, "plan"),
}
# Bump when a backend's engine step changes what it makes from the same graph (fusions, kernels),
# so builds redo those engines.
ENGINE_STEP_VERSION: dict[Backend, int] = {Backend.onnxruntime: 7, Backend.tensorrt: 2}


def resolve_backend(requested: Backend) -> Backend:
    if requested is not Backend.auto:
        return requested
    import torch

    return Backend.tensorrt if tensorrt_available() and torch.cuda.is_available() else Backend.onnxruntime


def fp32_onnx_from_model(
    component: Component,
    load_model: Callable[[], object],
    model_dir: ModelDir,
    cfg: ExportConfig,
    work: Path,
    source_hash: str,
) -> Path:
    """Export and validate one component at fp32, unless an export of the same inputs exists."""
    name = component.name
    graph = work / f"{name}.fp32.onnx"
    if component.inputs_hash is not None:
        source_hash = f"{source_hash}+{component.inputs_hash(model_dir)}"
    wanted = {"format": component.export_format, "source_hash": source_hash, "config": cfg.as_dict()}
    wanted |= component.export_settings()
    step = StepRecord(work / f"{name}.fp32.export.json", wanted)
    if step.current(graph) is not None:
        note(f"{name} fp32 ONNX up to date: {graph}")
        return graph

    with step.redo() as record, staged_graph(graph) as staged:  # the graph is in place before the record
        report = component.export(load_model(), model_dir, cfg, staged)
        for line in report.lines():
            note(line)
        report_path = work / f"{name}.fp32.validation.json"
        report.save(report_path)
        if not report.passed:
            raise ExportError(
                f"exported {name} disagrees with PyTorch beyond tolerance (see {report_path}); "
                f"this is a bug, please report it"
            )
        record["tools"] = build_tool_versions()
    return graph


def precision_onnx_from_fp32(
    component: Component, fp32: Path, fp32_hash: str, precision: Precision, work: Path
) -> Path:
    if precision is Precision.fp32:
        return fp32
    name = component.name
    graph = work / f"{name}.{precision.value}.onnx"
    from builder.precision import PASS_VERSION, fp16_from_fp32

    wanted = {"fp32_sha256": fp32_hash, "pass_version": PASS_VERSION}
    step = StepRecord(work / f"{name}.{precision.value}.json", wanted)
    if step.current(graph) is not None:
        note(f"{name} {precision.value} ONNX up to date: {graph}")
        return graph

    with stage(f"rewrite {name} to {precision.value}"), step.redo():
        fp16_from_fp32(fp32, graph)
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
    component: Component,
    graph: Path,
    graph_hash: str,
    precision: Precision,
    backend: Backend,
    out: Path,
    manifest: Manifest,
    step_options: dict | None = None,
    calibration: dict | None = None,
) -> None:
    step, suffix = ENGINE_STEPS[backend]
    name = f"{component.name}.{precision.value}.{suffix}"
    current = manifest.entry(component.name, precision.value)
    if (
        current
        and current.graph_sha256 == graph_hash
        and current.backend == backend.value
        and all((out / f.name).is_file() for f in expected_files(current))
        and current.tools == runtime_versions(backend.value)
        and current.report.get("step_version") == ENGINE_STEP_VERSION[backend]
    ):
        note(f"{component.name} {precision.value} engine up to date: {out / current.file}")
        if current.calibration != calibration:  # same graph from recalibrated data
            manifest.put(dataclasses.replace(current, calibration=calibration))
        return
    with stage(f"build {component.name} {precision.value} engine ({backend.value})"):
        start = time.perf_counter()
        with staged_graph(out / name) as staged:  # an ORT engine may come with external data
            report = step(graph, staged, **(step_options or {})) | {
                "step_version": ENGINE_STEP_VERSION[backend]
            }
        # An engine's I/O can differ from its graph's: the fused ORT decoder takes each layer's
        # pool as rows [NB·KVH·bs, D], and a TensorRT plan is parsed from a copy of the graph with
        # fp16 KV (report["onnx"]).
        io_graph = (
            out / name if backend is Backend.onnxruntime else graph.parent / report.get("onnx", graph.name)
        )
        model = onnx.load(str(io_graph), load_external_data=False)
        engine_data = model_data_files(model) if backend is Backend.onnxruntime else []  # model is the engine
        hashed = {n: sha256_file(out / n) for n in [name, *engine_data]}
        record_verified(out, hashed)
        manifest.put(
            EngineEntry(
                component=component.name,
                precision=precision.value,
                backend=backend.value,
                file=name,
                sha256=hashed.pop(name),
                graph_sha256=graph_hash,
                inputs=_tensor_specs(model.graph.input),
                outputs=_tensor_specs(model.graph.output),
                build_seconds=round(time.perf_counter() - start, 2),
                tools=runtime_versions(backend.value),
                calibration=calibration,
                report=report,
                size=(out / name).stat().st_size,
                data_files=[
                    {"file": n, "size": (out / n).stat().st_size, "sha256": sha} for n, sha in hashed.items()
                ],
            )
        )
        if "changed_op_counts" in report:
            per_layer = report.get("nodes_per_layer")
            layers = f" ({per_layer[0]} → {per_layer[1]} per decoder layer)" if per_layer else ""
            note(f"graph optimizer: {report['nodes_before']} → {report['nodes_after']} nodes{layers}")
            for op, (before, after) in report["changed_op_counts"].items():
                note(f"  {op:<40} {before:>5} → {after}")


def int8_onnx(component: Component, model_dir, fp32: Path, fp32_hash: str, cfg: BuildConfig, work: Path,
              out: Path | None, data) -> tuple[Path, dict]:  # fmt: skip
    """The int8 Q/DQ graph and its calibration summary; the TensorRT cache is copied beside the engines."""
    from builder.quantize.int8_step import int8_onnx_from_fp32

    int8 = int8_onnx_from_fp32(component, model_dir, fp32, fp32_hash, cfg.calibration, work, data)
    if out is not None:
        tmp = out / f".{int8.cache.name}.tmp"
        shutil.copyfile(int8.cache, tmp)
        os.replace(tmp, out / int8.cache.name)
    return int8.graph, int8.summary


def int4_onnx(component: Component, fp32: Path, fp32_hash: str, cfg: BuildConfig, work: Path,
              data) -> tuple[Path, dict]:  # fmt: skip
    """The int4 weight-only graph and its summary (method, block size, α per AWQ site)."""
    from builder.quantize.int4_step import int4_onnx_from_fp32

    awq = cfg.calibration.int4_method.calibrated
    int4 = int4_onnx_from_fp32(component.name, fp32, fp32_hash, cfg.calibration, work, data if awq else None)
    return int4.graph, int4.summary


def _calibration_sets(components: list[Component], model_dir: ModelDir, cfg: BuildConfig) -> dict:
    """Each calibrated component's data (int8, and int4 by AWQ), read and checked before minutes of
    export. Without a calibration hook a component's int8 engine is skipped; its int4 is RTN."""
    awq = Precision.int4 in cfg.precisions and cfg.calibration.int4_method.calibrated
    if Precision.int8 not in cfg.precisions and not awq:
        return {}
    from builder.quantize.int8_step import calibration_set

    for component in components:
        if component.calibration is None and Precision.int8 in cfg.precisions:
            note(f"{component.name} has no int8 calibration yet: its int8 engine is skipped")
    read: dict = {}  # by hook: pipeline stages share the text decoder's data, read once
    for component in components:
        if component.calibration is not None and component.calibration not in read:
            read[component.calibration] = calibration_set(component, model_dir, cfg.calibration)
    return {c.name: read[c.calibration] for c in components if c.calibration}


def _copy_tokenizer(model_dir: ModelDir, out: Path) -> None:
    target = out / "tokenizer"
    target.mkdir(exist_ok=True)
    for file in model_dir.side_files():
        shutil.copy2(file, target / file.name)


def build(model_dir: ModelDir, cfg: BuildConfig, out: Path, work: Path) -> Manifest:
    backend = resolve_backend(cfg.backend)
    check_only = backend is Backend.tensorrt and cfg.tensorrt.check_only
    if backend is Backend.tensorrt and not check_only:
        require_tensorrt()  # before minutes of export, not after
    if not check_only:
        out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    with stage(f"hash {model_dir.path}"):
        source_hash = model_dir.source_hash()
    shape = model_dir.family.shape(model_dir.load_config())
    export_cfg = cfg.export
    components = components_for(model_dir, cfg.pipeline_stages)
    calibration_sets = _calibration_sets(components, model_dir, cfg)
    fp32_graphs = {}
    model = None

    def load_model():  # once, and only if some component's export is stale
        nonlocal model
        if model is None:
            with stage(f"load {model_dir.path}"):
                model = model_dir.load()
        return model

    for component in components:
        fp32_graphs[component.name] = fp32_onnx_from_model(
            component, load_model, model_dir, export_cfg, work, source_hash
        )
    model = None  # free the PyTorch weights before engine builds
    try:
        manifest = Manifest.load(out)
        if manifest.model.get("source_hash") != source_hash:
            manifest.engines.clear()
    except EngineDirError:  # no manifest yet, or one this version cannot read: start afresh
        manifest = Manifest(model={}, decoder={}, axes={})
    for name in set(manifest.engines) - {c.name for c in components}:  # e.g. another stage count's
        del manifest.engines[name]
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
    stages = [{"component": c.name, "layers": list(c.layers)} for c in components if c.layers]
    if stages:  # the runtime runs these in order (runtime/stages.py)
        manifest.decoder["stages"] = stages
    manifest.encoders = {c.name: c.info(model_dir) for c in components if c.info is not None}
    manifest.axes = {
        "batch": [1, export_cfg.max_batch],
        "seq": [1, export_cfg.max_seq_len],
        "blocks": [1, export_cfg.max_blocks_per_seq],
        "logit_positions": [1, export_cfg.max_seq_len],
    }
    if manifest.encoders:  # the decoder's media_embeds rows (runtime/decoder_io.py)
        manifest.axes["media_tokens"] = [1, export_cfg.max_batch * export_cfg.max_seq_len]
    checks = []
    fp32_hashes: dict[str, str] = {}
    for component in components:
        fp32 = fp32_graphs[component.name]
        fp32_hash = fp32_hashes[component.name] = graph_digest(fp32)  # gigabytes: hash once
        data = calibration_sets.get(component.name)
        if data is not None and component.layers and component.layers[0] > 0:  # a later stage
            from builder.quantize.stage_feeds import staged_calibration

            before = [c.name for c in components if c.layers and c.layers[0] < component.layers[0]]
            data = staged_calibration(data, [(fp32_graphs[n], fp32_hashes[n]) for n in before])
        for precision in cfg.precisions:
            calibration = None
            if precision is Precision.int8:
                if data is None:
                    continue
                graph, calibration = int8_onnx(component, model_dir, fp32, fp32_hash, cfg, work,
                                               None if check_only else out, data)  # fmt: skip
            elif precision is Precision.int4:
                graph, calibration = int4_onnx(component, fp32, fp32_hash, cfg, work, data)
            else:
                graph = precision_onnx_from_fp32(component, fp32, fp32_hash, precision, work)
            if check_only:  # TensorRT consumes this pre-optimizer graph: check it instead of building
                checks.append(check_graph(graph))
                continue
            graph_hash = fp32_hash if graph == fp32 else graph_digest(graph)
            options = trt_step_options(component.name, precision.value, manifest, cfg.tensorrt, out)
            engine_from_onnx(component, graph, graph_hash, precision, backend, out, manifest,
                             options if backend is Backend.tensorrt else None, calibration)  # fmt: skip
    if check_only:
        print_reports(checks)
        raise_on_failure(checks)
        return Manifest(model=manifest.model, decoder=manifest.decoder, axes=manifest.axes)  # nothing built
    _copy_tokenizer(model_dir, out)
    manifest.save(out)
    return manifest
