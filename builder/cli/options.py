"""Options shared by several commands."""

from __future__ import annotations

from typing import Annotated

import typer

from builder.config import ExportConfig
from builder.model_dir import ModelDir

MaxSeqLen = Annotated[
    int, typer.Option(min=16, help="Longest sequence (prompt + completion) the engines accept.")
]


def export_config(model_dir: ModelDir, max_seq_len: int) -> ExportConfig:
    """The graph cannot address positions the model was not trained for."""
    trained = model_dir.family.shape(model_dir.load_config()).max_position_embeddings
    return ExportConfig(max_seq_len=min(max_seq_len, trained))


Devices = Annotated[
    str | None,
    typer.Option(
        help="CUDA device of each text decoder pipeline stage, e.g. 0,1 (engines built with "
        "--pipeline-stages 2); default: the first. The CPU where there is no CUDA device."
    ),
]


def parse_devices(devices: str | None) -> tuple[int, ...]:
    """`--devices 0,1` → (0, 1); None → ()."""
    from runtime.errors import RuntimeUserError

    if not devices:
        return ()
    try:
        parsed = tuple(int(part) for part in devices.split(","))
    except ValueError:
        parsed = (-1,)
    if any(device < 0 for device in parsed):
        raise RuntimeUserError(
            f"--devices {devices!r}: give CUDA device numbers separated by commas, e.g. 0,1"
        )
    return parsed
