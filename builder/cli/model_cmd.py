"""`autoglm-trt model create`: materialise a model preset as a Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from runtime.progress import console, stage

app = typer.Typer(help="Create model directories from presets.", no_args_is_help=True)


@app.command("create")
def create(
    preset: Annotated[str, typer.Option(help="glm4v-tiny (random, seconds) or smollm2-135m (real weights).")],
    out: Annotated[Path, typer.Option(help="Model directory to write, e.g. models/glm4v-tiny.")],
) -> None:
    """Write a preset model (safetensors + tokenizer with chat template) to OUT."""
    from builder.presets import create_preset

    with stage(f"create {preset} → {out}"):
        create_preset(preset, out)
    console.print(f"model ready: {out}")
