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
