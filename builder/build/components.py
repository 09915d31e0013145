"""The engine components a model directory yields, and how each is exported to fp32 ONNX.

A component knows whether a model has it, how to export and validate its graph from the loaded
PyTorch model, and the version of that export (bump it when the graph changes, so builds redo
stale exports). The build pipeline loops over `components_for(model_dir)` and treats them alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from builder.config import CalibrationConfig, ExportConfig
from builder.errors import BuildError
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
    # Hash of inputs outside the model dir's top level (its source hash covers only those files).
    inputs_hash: Callable[[ModelDir], str] | None = None
    # The manifest's `encoders[name]` block: shapes, tokens per item, preprocessing (encoders only).
    info: Callable[[ModelDir], dict] | None = None
    # INT8 calibration data: (model dir, calibration config) → calibration.feeds.CalibrationSet,
    # whose feeds fill the fp32 graph's declared inputs; None: this component has no int8 build.
    calibration: Callable[[ModelDir, CalibrationConfig], object] | None = None
    # A text decoder pipeline stage: its layers [start, stop) (part of what its export is made from).
    layers: tuple[int, int] | None = None

    def export_settings(self) -> dict:
        """What the export record adds to the model and config hashes."""
        return {"layers": list(self.layers)} if self.layers else {}


def _export_text_decoder(
    model, model_dir: ModelDir, cfg: ExportConfig, out: Path, stages: int = 1, index: int = 0
) -> ValidationReport:
    """The whole decoder, or stage `index` of `stages` (builder/export/paged_decoder.py)."""
    from builder.export.paged_decoder import decoder_stage, stage_ranges
    from builder.export.text_decoder import export_text_decoder, validate_text_decoder
    from runtime.progress import stage

    media = any(component.present(model_dir) for component in MEDIA_COMPONENTS)
    whole = decoder_stage(model, model_dir.family, media).eval()
    ranges = stage_ranges(whole.num_layers, stages)
    parts = [decoder_stage(model, model_dir.family, media, layers).eval() for layers in ranges]
    what = "text_decoder"
    if stages > 1:
        what += f" stage {index + 1}/{stages} (layers {ranges[index].start}–{ranges[index].stop - 1})"
    with stage(f"export {what} → ONNX (batch 1–{cfg.max_batch}, ≤{cfg.max_seq_len} tokens)"):
        export_text_decoder(parts[index], cfg, out)
    with stage(f"validate {what}: ONNX Runtime vs PyTorch (batch 1 and 8)"):
        return validate_text_decoder(whole, model, out, cfg, parts, index)


def _export_vision_encoder(model, model_dir: ModelDir, cfg: ExportConfig, out: Path) -> ValidationReport:
    from builder.export.vision_encoder import export_component

    return export_component(model, model_dir, cfg, out)


def _vision_info(model_dir: ModelDir) -> dict:
    from builder.export.vision_encoder import manifest_info

    return manifest_info(model_dir)


def _export_audio_encoder(model, model_dir: ModelDir, cfg: ExportConfig, out: Path) -> ValidationReport:
    from builder.export.audio_encoder import export_component

    return export_component(model_dir, cfg, out)  # its weights live in audio_encoder/, not in `model`


def _audio_info(model_dir: ModelDir) -> dict:
    from builder.export.audio_encoder import manifest_info

    return manifest_info(model_dir)


def _vision_calibration(model_dir: ModelDir, cfg: CalibrationConfig):
    from builder.export.vision_encoder import calibration

    return calibration(model_dir, cfg)


def _audio_calibration(model_dir: ModelDir, cfg: CalibrationConfig):
    from builder.export.audio_encoder import calibration

    return calibration(model_dir, cfg)


def _audio_hash(model_dir: ModelDir) -> str:
    from builder.export.audio_encoder import audio_inputs_hash

    return audio_inputs_hash(model_dir.path)


def _text_decoder_calibration(model_dir: ModelDir, cfg: CalibrationConfig):
    from builder.quantize.text_decoder_feeds import text_decoder_calibration

    return text_decoder_calibration(model_dir, cfg)


# export_format 3: the decoder of a model with encoders takes media_embeds/media_rows;
# 4: media rows selected with Where (TensorRT has no int64 Clip); 5: the forward that pipeline
# stages share (its graph is 4's, symbolic dims named in input order again).
TEXT_DECODER = Component(
    "text_decoder",
    export_format=5,
    present=lambda _: True,
    export=_export_text_decoder,
    calibration=_text_decoder_calibration,
)
VISION_ENCODER = Component(
    "vision_encoder",
    export_format=1,
    present=lambda model_dir: model_dir.family.name == "glm4v",
    export=_export_vision_encoder,
    info=_vision_info,
    calibration=_vision_calibration,
)
AUDIO_ENCODER = Component(
    "audio_encoder",
    export_format=1,
    present=lambda model_dir: (model_dir.path / "audio_encoder" / "config.json").is_file(),
    export=_export_audio_encoder,
    inputs_hash=_audio_hash,
    info=_audio_info,
    calibration=_audio_calibration,
)
MEDIA_COMPONENTS: tuple[Component, ...] = (VISION_ENCODER, AUDIO_ENCODER)

COMPONENTS: tuple[Component, ...] = (TEXT_DECODER, *MEDIA_COMPONENTS)


def stage_name(index: int) -> str:
    return f"{TEXT_DECODER.name}_stage{index}"


def text_decoder_stages(model_dir: ModelDir, stages: int) -> list[Component]:
    """The text decoder as `stages` graphs over contiguous layer ranges (one component each)."""
    from builder.export.paged_decoder import stage_ranges

    num_layers = model_dir.family.shape(model_dir.load_config()).num_layers
    if not 1 <= stages <= num_layers:
        raise BuildError(
            f"--pipeline-stages {stages} does not fit {model_dir.name}: it has {num_layers} decoder layers"
        )
    return [
        replace(
            TEXT_DECODER,
            name=stage_name(index),
            export=partial(_export_text_decoder, stages=stages, index=index),
            layers=(layers.start, layers.stop),
        )
        for index, layers in enumerate(stage_ranges(num_layers, stages))
    ]


def components_for(model_dir: ModelDir, pipeline_stages: int = 1) -> list[Component]:
    """Every component the model has; with `pipeline_stages` > 1 the text decoder's stages in
    place of the single decoder."""
    decoder = [TEXT_DECODER] if pipeline_stages == 1 else text_decoder_stages(model_dir, pipeline_stages)
    return [*decoder, *(component for component in MEDIA_COMPONENTS if component.present(model_dir))]
