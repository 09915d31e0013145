"""`autoglm-trt export`: the fp32 ONNX text decoder, validated against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from builder.cli.options import MaxSeqLen, export_config
from builder.model_dir import open_model_dir
from runtime.progress import console, stage


def export(
    model: Annotated[Path, typer.Option(help="Hugging Face model directory (models/NAME).")],
    out: Annotated[Path, typer.Option(help="Output directory for ONNX graphs (build/NAME).")],
    max_seq_len: MaxSeqLen = 2048,
) -> None:
    """Export the text decoder (paged KV, batch 1–8) to ONNX and compare it with PyTorch."""
    from builder.build.components import TEXT_DECODER
    from builder.build.pipeline import fp32_onnx_from_model

    model_dir = open_model_dir(model)
    out.mkdir(parents=True, exist_ok=True)
    with stage(f"hash {model}"):
        source_hash = model_dir.source_hash()
    cfg = export_config(model_dir, max_seq_len)
    graph = fp32_onnx_from_model(TEXT_DECODER, model_dir.load, model_dir, cfg, out, source_hash)
    console.print(f"exported: {graph}")
