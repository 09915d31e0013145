"""`autoglm-trt build`: export (if stale), precision passes, engines, manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from builder.cli.calibrate_cmd import CalibData, CalibSamples, Exclude, Int8Sensitive, SmoothAlpha
from builder.cli.options import MaxSeqLen, export_config
from builder.config import (
    INT4_BLOCK_SIZES,
    Backend,
    BuildConfig,
    CalibrationConfig,
    Int4Method,
    Precision,
    TensorRTConfig,
)
from builder.errors import BackendUnavailableError
from builder.model_dir import open_model_dir
from calibration.errors import CalibrationError
from runtime.progress import console, stage


def build(
    model: Annotated[Path, typer.Option(help="Hugging Face model directory (models/NAME).")],
    out: Annotated[Path, typer.Option(help="Engines directory to write (engines/NAME).")],
    precision: Annotated[
        list[Precision] | None, typer.Option(help="Repeat for several; default fp32 and fp16.")
    ] = None,
    backend: Annotated[
        Backend, typer.Option(help="auto: TensorRT when it imports and a GPU is present.")
    ] = Backend.auto,
    work_dir: Annotated[
        Path | None, typer.Option(help="Where ONNX graphs go; default build/<model name>.")
    ] = None,
    max_seq_len: MaxSeqLen = 2048,
    check_only: Annotated[
        bool,
        typer.Option(
            "--check-only",
            help="With --backend tensorrt: export and rewrite precision, then check every graph against "
            "TensorRT's ONNX parser on the CPU instead of building (no TensorRT needed).",
        ),
    ] = False,
    trt_opt_level: Annotated[
        int, typer.Option(min=0, max=5, help="TensorRT builder optimization level (0 fastest build, 5 best).")
    ] = 3,
    trt_workspace_gib: Annotated[
        float | None, typer.Option(min=0.0625, help="TensorRT workspace memory limit in GiB (default: all).")
    ] = None,
    calib_data: CalibData = None,
    calib_samples: CalibSamples = CalibrationConfig.samples,
    exclude: Exclude = None,
    int8_sensitive: Int8Sensitive = False,
    smooth_alpha: SmoothAlpha = CalibrationConfig.smooth_alpha,
    int4_block_size: Annotated[
        int,
        typer.Option(
            help=f"int4: weights per scale along the contracted axis, one of {', '.join(map(str, INT4_BLOCK_SIZES))}."
        ),
    ] = CalibrationConfig.int4_block_size,
    int4_method: Annotated[
        Int4Method,
        typer.Option(
            help="int4: gptq takes awq's scales, then rounds each weight against samples of its input; "
            "awq scales salient input channels from the calibration data, then rounds to nearest; "
            "rtn rounds as is."
        ),
    ] = CalibrationConfig.int4_method,
    int4_table_bits: Annotated[
        int,
        typer.Option(
            help="int4: bits of a tied embedding table (embedding + lm_head): 4 (blocks along H) or 8 "
            "(per vocab row; larger, more accurate)."
        ),
    ] = CalibrationConfig.int4_table_bits,
    pipeline_stages: Annotated[
        int,
        typer.Option(
            min=1,
            help="Split the text decoder into N graphs over contiguous layer ranges, each with its own "
            "KV pool, to run stage i on device i (serve/generate --devices).",
        ),
    ] = 1,
) -> None:
    """Build one engine per precision into OUT, skipping work whose inputs have not changed."""
    from builder.build.pipeline import build as run_build
    from runtime.engine_loader import expected_files

    if check_only and backend is not Backend.tensorrt:
        raise BackendUnavailableError(
            f"--check-only checks graphs for the TensorRT backend, but --backend is {backend.value}; "
            "add --backend tensorrt"
        )
    if int4_block_size not in INT4_BLOCK_SIZES:
        raise CalibrationError(
            f"--int4-block-size {int4_block_size} is not supported; use one of "
            f"{', '.join(map(str, INT4_BLOCK_SIZES))} (smaller blocks: more accurate, more scales to store)"
        )
    if int4_table_bits not in (4, 8):
        raise CalibrationError(f"--int4-table-bits {int4_table_bits} is not supported; use 4 or 8")
    model_dir = open_model_dir(model)
    if model_dir.shape_only and not check_only:
        raise model_dir.no_weights_error()
    cfg = BuildConfig(
        export=export_config(model_dir, max_seq_len),
        precisions=tuple(dict.fromkeys(precision or [Precision.fp32, Precision.fp16])),
        backend=backend,
        tensorrt=TensorRTConfig(trt_opt_level, trt_workspace_gib, check_only),
        calibration=CalibrationConfig(
            calib_data,
            calib_samples,
            tuple(exclude or ()),
            int8_sensitive,
            smooth_alpha,
            int4_block_size,
            int4_method,
            int4_table_bits,
        ),
        pipeline_stages=pipeline_stages,
    )
    with stage(f"build {model_dir.name} → {out}"):
        if model_dir.shape_only:  # config only: every graph is checked at full size, nothing is built
            from builder.build.shape_only import check_shape_only

            check_shape_only(model_dir, cfg, work_dir or Path("build") / model_dir.name)
            return
        manifest = run_build(model_dir, cfg, out, work_dir or Path("build") / model_dir.name)

    for component, entries in manifest.engines.items():
        for name, entry in sorted(entries.items()):
            size = sum((out / f.name).stat().st_size for f in expected_files(entry)) / 2**20
            console.print(
                f"  {component:<14} {name:<5} {entry.backend:<12} {size:8.1f} MiB  {out / entry.file}"
            )
