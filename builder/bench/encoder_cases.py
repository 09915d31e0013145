"""Benchmark cases and accuracy of the media encoders (vision, audio).

Inputs are real media run through the runtime's own preprocessing: scikit-image's sample photos
for vision, a synthesized voiced sound (harmonics + noise) for audio, repeated to fill a batch.

Accuracy against the fp32 encoder on the same inputs:
  cosine        mean over embedding rows (every output token of every item) of cos(x, x_fp32)
  max_abs_diff  largest element-wise difference
  top1          None: embeddings have no vocabulary, so argmax agreement would measure nothing
"""

from __future__ import annotations

import io
import wave
from collections.abc import Callable

import numpy as np

from builder.bench.accuracy import row_cosines
from runtime.engines.base import Engine
from runtime.manifest import Manifest

ENCODERS = ("vision_encoder", "audio_encoder")
SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")


def _images(count: int) -> list[bytes]:
    from PIL import Image
    from skimage import data

    out = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, SAMPLE_IMAGES[i % len(SAMPLE_IMAGES)])()).convert("RGB").save(
            buffer, "PNG"
        )
        out.append(buffer.getvalue())
    return out


def _voice_wav(seconds: float, rate: int, seed: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pitch = 110 + 30 * seed
    wave_ = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 8))
    noise = np.random.default_rng(seed).normal(0, 0.05, t.shape)
    samples = (0.3 * (wave_ / np.abs(wave_).max()) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + noise) * 32767
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.clip(samples, -32768, 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def encoder_inputs(manifest: Manifest, component: str, batch: int) -> np.ndarray:
    """[batch, ...] float32 inputs in the engine's input shape."""
    info = manifest.encoders[component]
    if component == "vision_encoder":
        from runtime.multimodal.image import ImagePreprocessor, ImageSpec

        return ImagePreprocessor(ImageSpec.from_info(info))(_images(batch))
    from runtime.multimodal.audio import AudioPreprocessor, AudioSpec

    spec = AudioSpec.from_info(info)
    window = spec.window_samples / spec.sampling_rate
    clips = [_voice_wav(window * 0.8, spec.sampling_rate, seed) for seed in range(batch)]
    features, _ = AudioPreprocessor(spec)(clips)
    return features


def encode_case(engine: Engine, info: dict, inputs: np.ndarray) -> Callable[[], np.ndarray]:
    feeds = {info["input"]: np.ascontiguousarray(inputs, np.float32)}
    return lambda: engine.run(feeds, [info["output"]])[0]  # [B, T, hidden]


def tokens_per_item(info: dict) -> int:
    return int(info["tokens_per_item"])


def encoder_accuracy(outputs: dict[str, np.ndarray], component: str, reference: str = "fp32") -> list[dict]:
    """Per precision other than the reference: cosine and max |diff| of embeddings vs the reference."""
    ref = outputs[reference].astype(np.float64)
    rows = []
    for precision, out in outputs.items():
        if precision == reference:
            continue
        out = out.astype(np.float64)
        flat, flat_ref = out.reshape(-1, out.shape[-1]), ref.reshape(-1, ref.shape[-1])
        rows.append(
            {
                "component": component,
                "precision": precision,
                "cosine": round(float(row_cosines(flat, flat_ref).mean()), 6),
                "top1": None,
                "max_abs_diff": round(float(np.abs(out - ref).max()), 6),
                "rows": int(flat.shape[0]),
            }
        )
    return rows


def encoder_components(manifest: Manifest) -> list[str]:
    return [c for c in ENCODERS if c in manifest.encoders and manifest.precisions(c)]
