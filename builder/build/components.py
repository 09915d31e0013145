"""The engine components a model directory yields, and how each is exported to fp32 ONNX.

A component knows whether a model has it, how to export and validate its graph from the loaded
PyTorch model, and the version of that export (bump it when the graph changes, so builds redo
stale exports). The build pipeline loops over `components_for(model_dir)` and treats them alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.config import ExportConfig
from builder.export.validation import ValidationReport
from builder.model_dir import ModelDir

# (loaded HF model, model dir, export config, graph path to write) → validation report
ExportFn = Callable[[object, ModelDir, ExportConfig, Path], ValidationReport]


@dataclass(frozen=True)
class Component:
    name: str
    export_format: int
    present: Callable[[ModelDir], bool]
    export: ExportFn


def _export_text_decoder(model, model_dir: ModelDir, cfg: ExportConfig, out: Path) -> ValidationReport:
    from builder.export.paged_decoder import PagedDecoder
    from builder.export.text_decoder import export_text_decoder, validate_text_decoder
    from builder.progress import stage

    decoder = PagedDecoder(model, model_dir.family).eval()
    with stage(f"export text_decoder → ONNX (batch 1–{cfg.max_batch}, ≤{cfg.max_seq_len} tokens)"):
        export_text_decoder(decoder, cfg, out)
    with stage("validate text_decoder: ONNX Runtime vs PyTorch (batch 1 and 8)"):
        return validate_text_decoder(decoder, model, out, cfg)


TEXT_DECODER = Component("text_decoder", export_format=2, present=lambda _: True, export=_export_text_decoder)

COMPONENTS: tuple[Component, ...] = (TEXT_DECODER,)


def components_for(model_dir: ModelDir) -> list[Component]:
    return [component for component in COMPONENTS if component.present(model_dir)]
