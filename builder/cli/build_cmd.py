"""`autoglm-trt build`: export (if stale), precision passes, engines, manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from builder.cli.options import MaxSeqLen, export_config
from builder.config import Backend, BuildConfig, Precision
from builder.model_dir import open_model_dir
from builder.progress import console, stage


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
) -> None:
    """Build one engine per precision into OUT, skipping work whose inputs have not changed."""
    from builder.build.pipeline import build as run_build

    model_dir = open_model_dir(model)
    cfg = BuildConfig(
        export=export_config(model_dir, max_seq_len),
        precisions=tuple(dict.fromkeys(precision or [Precision.fp32, Precision.fp16])),
        backend=backend,
    )
    with stage(f"build {model_dir.name} → {out}"):
        manifest = run_build(model_dir, cfg, out, work_dir or Path("build") / model_dir.name)
    for name, entry in sorted(manifest.engines.get("text_decoder", {}).items()):
        size = (out / entry.file).stat().st_size / 2**20
        console.print(f"  text_decoder {name:<5} {entry.backend:<12} {size:8.1f} MiB  {out / entry.file}")
