"""The exportable speech encoder: Whisper log-mel features → Whisper encoder → projector.

A model directory with speech input keeps it in `audio_encoder/` (see builder/presets/glm4v_tiny.py):
`config.json` (architecture "whisper-encoder+projector", the WhisperConfig, the projector's
layout), `model.safetensors` (`encoder.*` WhisperEncoder keys, `projector.{0,2}.*`) and the
WhisperFeatureExtractor's `preprocessor_config.json`.

Input  `input_features` float32 [B, mel, frames]  (B ≤ 8; one 30 s window, frames = 3000)
Output `embeddings`     float32 [B, T, hidden]     T = frames / 2 / stack_factor (375 for 30 s)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file
from torch import nn

from builder.config import ExportConfig
from builder.errors import ModelDirError
from builder.export.batched_encoder import export_batched_encoder
from builder.export.validation import ValidationReport, compare
from builder.model_dir import ModelDir
from runtime.onnx_files import update_digest

SUBDIR = "audio_encoder"
ARCHITECTURE = "whisper-encoder+projector"
INPUT, OUTPUT = "input_features", "embeddings"
ATOL, RTOL = 1e-4, 1e-4  # fp32 ONNX Runtime vs eager PyTorch


@dataclass(frozen=True)
class AudioGeometry:
    num_mel_bins: int
    frames: int  # mel frames per window (Whisper: 3000 = 30 s at a 10 ms hop)
    tokens_per_clip: int
    sampling_rate: int
    chunk_seconds: int


def audio_inputs_hash(model_path: Path) -> str:
    """sha256 over the audio encoder's files (the model dir's own hash covers top-level files only)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in (model_path / SUBDIR).iterdir() if p.is_file()):
        digest.update(file.name.encode() + b"\0")
        update_digest(digest, file)
    return digest.hexdigest()


class AudioEncoder(nn.Module):
    """WhisperEncoder, then `stack_factor` consecutive frames concatenated, then the projector MLP."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, stack_factor: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.stack_factor = stack_factor

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_features).last_hidden_state  # [B, frames/2, d_model]
        batch, frames, dim = hidden.shape
        stacked = hidden.reshape(batch, frames // self.stack_factor, dim * self.stack_factor)
        return self.projector(stacked)


def read_audio_config(model_path: Path) -> dict:
    path = model_path / SUBDIR / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelDirError(f"{path} is not readable JSON ({error}); re-save the model") from None
    if config.get("architecture") != ARCHITECTURE:
        raise ModelDirError(
            f"{path}: audio encoder architecture {config.get('architecture')!r} is not supported "
            f"(supported: {ARCHITECTURE!r})"
        )
    return config


def load_audio_encoder(model_path: Path) -> AudioEncoder:
    """The PyTorch reference (Hugging Face WhisperEncoder + projector), fp32, eval mode."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = read_audio_config(model_path)
    whisper = WhisperConfig(**config["whisper"])
    whisper._attn_implementation = "eager"
    projector_cfg = config["projector"]
    if projector_cfg["layers"] != ["linear", "gelu", "linear"]:
        raise ModelDirError(f"audio projector layers {projector_cfg['layers']} are not supported")
    encoder = WhisperEncoder(whisper)
    projector = nn.Sequential(
        nn.Linear(projector_cfg["in_features"], projector_cfg["hidden_features"]),
        nn.GELU(),
        nn.Linear(projector_cfg["hidden_features"], projector_cfg["out_features"]),
    )
    state = load_file(model_path / SUBDIR / config.get("weights", "model.safetensors"))
    encoder.load_state_dict(
        {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    )
    projector.load_state_dict(
        {k.removeprefix("projector."): v for k, v in state.items() if k.startswith("projector.")}
    )
    return AudioEncoder(encoder, projector, projector_cfg["stack_factor"]).eval()


def audio_geometry(model_path: Path) -> AudioGeometry:
    config = read_audio_config(model_path)
    extractor = json.loads((model_path / SUBDIR / "preprocessor_config.json").read_text())
    whisper = config["whisper"]
    positions = whisper.get("max_source_positions", 1500)
    return AudioGeometry(
        num_mel_bins=extractor["feature_size"],
        frames=extractor["nb_max_frames"],
        tokens_per_clip=positions // config["projector"]["stack_factor"],
        sampling_rate=extractor["sampling_rate"],
        chunk_seconds=extractor["chunk_length"],
    )


def export_audio_encoder(
    encoder: AudioEncoder, geometry: AudioGeometry, cfg: ExportConfig, out: Path
) -> None:
    example = torch.randn(2, geometry.num_mel_bins, geometry.frames)
    export_batched_encoder(encoder, example, (INPUT, OUTPUT), cfg, out, "audio encoder")


def validate_audio_encoder(
    encoder: AudioEncoder, geometry: AudioGeometry, graph: Path, cfg: ExportConfig
) -> ValidationReport:
    """ONNX Runtime vs the PyTorch encoder + projector at batch 1 and 8, on log-mel-like inputs."""
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    checks = []
    for batch in (1, cfg.max_batch):
        rng = np.random.default_rng(batch)
        # Whisper features lie in [-1.5, 1.5] after its log/clamp/scale; sample that range.
        features = rng.uniform(-1.5, 1.5, (batch, geometry.num_mel_bins, geometry.frames)).astype(np.float32)
        with torch.no_grad():
            reference = encoder(torch.from_numpy(features)).numpy()
        (onnx_out,) = session.run([OUTPUT], {INPUT: features})
        checks.append(compare(f"b{batch} {geometry.frames} frames", OUTPUT, reference, onnx_out, ATOL, RTOL))
    return ValidationReport(
        graph=graph.name, reference="PyTorch eager (HF WhisperEncoder + projector)", checks=tuple(checks)
    )


def manifest_info(model_dir: ModelDir) -> dict:
    """The manifest's `encoders.audio_encoder` block (what runtime/multimodal needs)."""
    config = read_audio_config(model_dir.path)
    g = audio_geometry(model_dir.path)
    return {
        "input": INPUT,
        "output": OUTPUT,
        "input_shape": [g.num_mel_bins, g.frames],
        "tokens_per_item": g.tokens_per_clip,
        "hidden_size": config["projector"]["out_features"],
        "window_seconds": g.chunk_seconds,
        "clip_policy": "pad-and-split",
        "token_ids": {
            "placeholder": config["audio_token_id"],
            "start": config["audio_start_token_id"],
            "end": config["audio_end_token_id"],
        },
        "preprocessor": json.loads((model_dir.path / SUBDIR / "preprocessor_config.json").read_text()),
    }


def export_component(model_dir: ModelDir, cfg: ExportConfig, out: Path) -> ValidationReport:
    from runtime.progress import stage

    encoder, geometry = load_audio_encoder(model_dir.path), audio_geometry(model_dir.path)
    with stage(f"export audio_encoder → ONNX (batch 1–{cfg.max_batch}, {geometry.frames} mel frames)"):
        export_audio_encoder(encoder, geometry, cfg, out)
    with stage("validate audio_encoder: ONNX Runtime vs PyTorch (batch 1 and 8)"):
        return validate_audio_encoder(encoder, geometry, out, cfg)


def _synthetic_voice(seconds: float, seed: int, rate: int) -> np.ndarray:
    """Voiced-speech-like audio: a gliding 90–250 Hz pitch with harmonics and a syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = rng.uniform(90, 250) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) * rng.uniform(0.2, 1) / k for k in range(1, 8))
    envelope = np.sin(np.pi * rng.uniform(2, 6) * t) ** 2
    noise = rng.standard_normal(t.size) * 0.01
    return (0.3 * voice * envelope / 3 + noise).astype(np.float32)


def calibration(model_dir: ModelDir, cfg):
    """INT8 calibration feeds: the first 30 s window of each WAV clip (16 kHz) in `--data DIR`, else
    of Debian's pocketsphinx-testdata speech where installed, else synthesized voiced-speech-like
    clips (no Python package ships speech)."""
    from calibration.errors import CalibrationError
    from calibration.feeds import CalibrationSet, digest_of
    from calibration.readers import audio_samples, default_speech
    from runtime.multimodal.audio import AudioPreprocessor, AudioSpec

    preprocess = AudioPreprocessor(AudioSpec.from_info(manifest_info(model_dir)))
    rate = preprocess.spec.sampling_rate
    samples = audio_samples(cfg.data, cfg.samples) if cfg.data is not None else default_speech(cfg.samples)
    if samples is None:
        clips = [_synthetic_voice(2 + (i % 7) * 4, seed=i, rate=rate) for i in range(cfg.samples)]
        description = (
            f"{len(clips)} synthesized voiced-speech-like clips (no speech installed: "
            f"apt-get install pocketsphinx-testdata, or --calib-data DIR)"
        )
    else:
        clips = []
        for clip in samples:
            if clip.rate != rate:
                raise CalibrationError(
                    f"calibration audio must be sampled at {rate} Hz, found {clip.rate} Hz"
                )
            clips.append(clip.samples[: preprocess.spec.window_samples])
        description = samples.description
    features = [preprocess.features([clip]) for clip in clips]

    def feeds(inputs):
        for batch in features:
            yield {INPUT: batch}

    return CalibrationSet(description, len(features), digest_of(f.tobytes() for f in features), feeds)
