"""torch.onnx.export for a media encoder: one float input whose first axis is the batch (1–max_batch)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from builder.config import ExportConfig
from builder.errors import ExportError
from runtime.onnx_files import EXTERNAL_DATA_MIN_BYTES


def export_batched_encoder(
    encoder: nn.Module, example: torch.Tensor, names: tuple[str, str], cfg: ExportConfig, out: Path, what: str
) -> None:
    """Export `encoder(example)` with `names` = (input, output); `what` names it in errors."""
    large = sum(p.numel() * p.element_size() for p in encoder.parameters()) >= EXTERNAL_DATA_MIN_BYTES
    program = batched_encoder_program(encoder, example, names, cfg, what)
    with contextlib.redirect_stdout(sys.stderr):  # the exporter chats on stdout
        program.save(str(out), external_data=large)


def batched_encoder_program(
    encoder: nn.Module, example: torch.Tensor, names: tuple[str, str], cfg: ExportConfig, what: str
) -> torch.onnx.ONNXProgram:
    """The graph in memory, its initializers still the encoder's own tensors (nothing written)."""
    input_name, output_name = names
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):  # the exporter chats on stdout
        try:
            return torch.onnx.export(
                encoder,
                (example,),
                None,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes={input_name: {0: Dim("batch", min=1, max=cfg.max_batch)}},
                opset_version=cfg.opset,
                dynamo=True,
                verbose=False,
            )
        except Exception as error:  # the exporter raises many types; report them as one
            raise ExportError(f"torch.onnx.export failed for the {what}: {error}") from error
