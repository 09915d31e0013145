"""`build --check-only` for a shape-only model directory: the real graphs, no weights.

Config → PyTorch model whose weights are stand-ins (`stand_in_weights`: right shape and dtype,
one scalar of memory each) → the same torch.onnx.export a real build runs, nothing written →
fp32 graph whose weights are shape-only initializers (runtime/shape_only.py) → the precision
passes on structure (fp16 retypes the weights; int4 puts block-wise int4 DequantizeLinear on
every MatMul weight, as RTN and AWQ both do: AWQ changes values only) → TensorRT's parser check.
int8 is skipped: its activation scales come from running the model on calibration data.
There is no ONNX Runtime vs PyTorch comparison either: nothing can run without weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import onnx
import onnx_ir as ir
import torch

from builder.build.components import (
    MEDIA_COMPONENTS,
    TEXT_DECODER,
    VISION_ENCODER,
    Component,
    components_for,
)
from builder.build.shape_only_report import GraphSummary, print_summaries, summarise, write_report
from builder.build.stage_memory import print_stage_memory, stage_memory
from builder.config import BuildConfig, CalibrationConfig, ExportConfig, Precision
from builder.model_dir import ModelDir
from builder.trt_check import check_graph
from builder.trt_check.report import print_reports, raise_on_failure
from runtime.build_records import StepRecord
from runtime.progress import note, stage
from runtime.shape_only import NO_WEIGHTS, write_no_weights_file

# Bump when the stand-ins or the graph writing change, so checks redo their fp32 exports.
SHAPE_ONLY_VERSION = 1
# Smaller initializers keep their (stand-in) values: shape vectors, axes and scalars are constants
# the checks read. Larger ones are weights, or computed from weights, and become shape-only.
INLINE_MAX_BYTES = 1024
INT8_SKIPPED = "int8 skipped: its activation scales come from calibration data run through the model"

ProgramFn = Callable[[torch.nn.Module, ModelDir, ExportConfig], torch.onnx.ONNXProgram]


def stand_in_weights(module: torch.nn.Module) -> None:
    """Replace every parameter and buffer, in place, by a zero-stride view of one scalar: the shape
    and dtype (fp32 for floats, as ModelDir.load) the export traces, 4 bytes of memory. Each holds
    a different value, so no pass merges two stand-ins as equal constants (the exporter
    deduplicates equal initializers; distinct real weights never are)."""
    count = 0
    for sub in module.modules():
        for store in (sub._parameters, sub._buffers):
            for name, tensor in list(store.items()):
                if tensor is None:
                    continue
                count += 1
                dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
                value = torch.full((), count, dtype=dtype).expand(tensor.shape)
                store[name] = (
                    torch.nn.Parameter(value, requires_grad=False) if store is sub._parameters else value
                )


def stand_in_model(model_dir: ModelDir) -> torch.nn.Module:
    """The model built on the meta device (no memory), then given stand-in weights."""
    config = model_dir.load_config()
    with torch.device("meta"):
        model = model_dir.family.model_class(config)
    stand_in_weights(model)
    return model.eval()


def _text_decoder_program(
    model, model_dir: ModelDir, cfg: ExportConfig, layers: range | None = None
) -> torch.onnx.ONNXProgram:
    """The whole decoder, or the pipeline stage over `layers`."""
    from builder.export.paged_decoder import decoder_stage
    from builder.export.text_decoder import text_decoder_program

    media = any(component.present(model_dir) for component in MEDIA_COMPONENTS)
    return text_decoder_program(decoder_stage(model, model_dir.family, media, layers).eval(), cfg)


def _vision_encoder_program(model, model_dir: ModelDir, cfg: ExportConfig) -> torch.onnx.ONNXProgram:
    from builder.export.vision_encoder import batched_vision_encoder, vision_encoder_program

    return vision_encoder_program(batched_vision_encoder(model, model_dir), cfg)


# The audio encoder loads its own weights from audio_encoder/; a shape-only directory has none.
PROGRAMS: dict[str, ProgramFn] = {
    TEXT_DECODER.name: _text_decoder_program,
    VISION_ENCODER.name: _vision_encoder_program,
}


def shape_only_graph(program: torch.onnx.ONNXProgram, graph: Path) -> None:
    """Write `program` to `graph` as the exporter would, its large initializers replaced by
    shape-only stand-ins; no weight is materialised (they are the stand-ins' views)."""
    for value in program.model.graph.initializers.values():
        tensor = value.const_value
        if tensor.nbytes > INLINE_MAX_BYTES:
            value.const_value = ir.ExternalTensor(
                NO_WEIGHTS, None, None, tensor.dtype, shape=tensor.shape, name=value.name
            )
    ir.save(program.model, str(graph))  # keeps external tensors as they are: nothing is read
    onnx.checker.check_model(str(graph))


def fp32_graph(component: Component, model_fn: Callable[[], torch.nn.Module], model_dir: ModelDir,
               cfg: ExportConfig, work: Path) -> Path:  # fmt: skip
    """The shape-only fp32 graph of `component`, unless one of the same inputs exists."""
    name = component.name
    graph = work / f"{name}.fp32.onnx"
    wanted = {"version": SHAPE_ONLY_VERSION, "format": component.export_format,
              "source_hash": model_dir.source_hash(), "config": cfg.as_dict()}  # fmt: skip
    wanted |= component.export_settings()
    step = StepRecord(work / f"{name}.fp32.shape-only.json", wanted)
    # its weights are shape-only stand-ins (no bytes to check), so the graph file is all there is
    if step.current(graph, whole=Path.is_file) is not None:
        note(f"{name} shape-only fp32 ONNX up to date: {graph}")
        return graph
    with stage(f"export {name} → ONNX, shape-only weights (batch 1–{cfg.max_batch})"), step.redo():
        if component.layers:  # a pipeline stage of the text decoder
            program = _text_decoder_program(model_fn(), model_dir, cfg, range(*component.layers))
        else:
            program = PROGRAMS[name](model_fn(), model_dir, cfg)
        shape_only_graph(program, graph)
    return graph


def fp16_graph(fp32: Path, graph: Path) -> None:
    from builder.precision import fp16_model

    onnx.save(fp16_model(onnx.load(str(fp32), load_external_data=False)), str(graph))
    onnx.checker.check_model(str(graph))


def int4_graph(fp32: Path, graph: Path, cfg: CalibrationConfig) -> None:
    from builder.quantize.int4_step import raise_on_changed_ops, set_opset
    from calibration.weight_only import INT8, Scheme, weight_only

    model = onnx.load(str(fp32), load_external_data=False)
    raise_on_changed_ops(model)
    scheme = Scheme(4, cfg.int4_block_size)
    weight_only(model, scheme, table_scheme=scheme if cfg.int4_table_bits == 4 else INT8)
    set_opset(model)
    onnx.save(model, str(graph))
    onnx.checker.check_model(str(graph))


def precision_graph(fp32: Path, precision: Precision, cfg: BuildConfig) -> Path | None:
    if precision is Precision.fp32:
        return fp32
    if precision is Precision.int8:
        return None
    graph = fp32.with_name(fp32.name.replace(".fp32.", f".{precision.value}."))
    with stage(f"rewrite {graph.name.split('.')[0]} to {precision.value} (shape-only weights)"):
        if precision is Precision.fp16:
            fp16_graph(fp32, graph)
        else:
            int4_graph(fp32, graph, cfg.calibration)
    return graph


def check_shape_only(model_dir: ModelDir, cfg: BuildConfig, work: Path) -> list[GraphSummary]:
    """Export, rewrite and check every graph of `model_dir` at its real size, without weights.
    Prints and writes (`work/shape_check.json`) nodes, inputs/outputs and weight bytes per graph;
    raises TensorRTCompatError when a graph fails the check."""
    start = time.perf_counter()
    write_no_weights_file(work)
    every = components_for(model_dir, cfg.pipeline_stages)
    components = [c for c in every if c.name in PROGRAMS or c.layers]
    for component in every:
        if component not in components:
            note(f"{component.name} skipped: it has no shape-only export")
    if Precision.int8 in cfg.precisions:
        note(INT8_SKIPPED)
    model = None

    def model_fn() -> torch.nn.Module:  # once, and only if some export is stale
        nonlocal model
        if model is None:
            model = stand_in_model(model_dir)
        return model

    summaries, checks = [], []
    for component in components:
        fp32 = fp32_graph(component, model_fn, model_dir, cfg.export, work)
        for precision in cfg.precisions:
            graph = precision_graph(fp32, precision, cfg)
            if graph is None:
                continue
            check = check_graph(graph)
            checks.append(check)
            summaries.append(summarise(component.name, precision.value, graph, check))
    print_reports(checks)
    print_summaries(summaries)
    if cfg.pipeline_stages > 1:
        memory = stage_memory(model_dir, cfg, components, summaries)
        print_stage_memory(memory, cfg)
    skipped = {Precision.int8.value: INT8_SKIPPED} if Precision.int8 in cfg.precisions else {}
    extra = {"stage_memory": [asdict(row) for row in memory]} if cfg.pipeline_stages > 1 else {}
    write_report(work / "shape_check.json", model_dir, summaries, skipped, time.perf_counter() - start, extra)
    raise_on_failure(checks)
    return summaries
