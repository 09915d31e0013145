"""The vision and audio encoder engines: built beside the text decoder, validated against PyTorch,
dynamic batch 1–8, fp16 close to fp32, and the same embeddings Hugging Face computes."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from builder.export.audio_encoder import load_audio_encoder
from builder.export.vision_encoder import VisionGeometry, hf_patches
from builder.model_dir import open_model_dir
from runtime import decoder_io as io
from runtime.engine_loader import load_engine
from runtime.manifest import Manifest
from runtime.multimodal.audio import AudioPreprocessor, AudioSpec
from runtime.multimodal.image import ImagePreprocessor, ImageSpec
from tests.runtime.test_multimodal_preprocess import make_image, png, speech_like, wav

ENCODERS = ("vision_encoder", "audio_encoder")


@functools.cache
def hf_model(model_dir):
    return open_model_dir(model_dir).load()


@pytest.fixture(scope="module")
def manifest(glm4v_tiny_engines) -> Manifest:
    return Manifest.load(glm4v_tiny_engines)


def _run(engines, manifest, component: str, precision: str, batch: np.ndarray) -> np.ndarray:
    info = manifest.encoders[component]
    engine = load_engine(manifest, engines, component, precision)
    return engine.run({info["input"]: batch}, [info["output"]])[0]


def test_manifest_lists_encoders_with_their_info(manifest, glm4v_tiny_engines, tmp_path_factory):
    for component in ENCODERS:
        assert {"fp16", "fp32"} <= set(manifest.precisions(component))
        for precision in ("fp32", "fp16"):
            entry = manifest.entry(component, precision)
            assert entry.inputs[0].shape[0] == "batch" and entry.inputs[0].dtype == "float32"
            assert entry.outputs[0].dtype == "float32", "encoder I/O stays fp32 at every precision"
    vision, audio = manifest.encoders["vision_encoder"], manifest.encoders["audio_encoder"]
    assert vision["input_shape"] == [3, 224, 224] and vision["tokens_per_item"] == 64
    assert audio["input_shape"] == [80, 3000] and audio["tokens_per_item"] == 375
    assert vision["hidden_size"] == audio["hidden_size"] == manifest.decoder["hidden_size"]
    decoder_inputs = [t.name for t in manifest.entry("text_decoder", "fp32").inputs]
    assert set(io.MEDIA_INPUTS) <= set(decoder_inputs)
    work = tmp_path_factory.getbasetemp() / "build" / "glm4v-tiny"
    for component in ENCODERS:  # each export ended with its comparison at batch 1 and 8
        report = json.loads((work / f"{component}.fp32.validation.json").read_text())
        assert report["passed"]
        assert {c["case"].split()[0] for c in report["checks"]} == {"b1", "b8"}


def test_text_only_model_has_no_encoders_or_media_inputs(smollm2_engines):
    manifest = Manifest.load(smollm2_engines)
    assert not manifest.encoders and set(manifest.engines) == {"text_decoder"}
    assert not {t.name for t in manifest.entry("text_decoder", "fp32").inputs} & set(io.MEDIA_INPUTS)


def test_vision_engine_equals_hf_on_preprocessed_images(glm4v_tiny_model, glm4v_tiny_engines, manifest):
    """Files → our preprocessing → engine, vs the same pixels → HF's get_image_features, batch 1 and 8."""
    preprocess = ImagePreprocessor(ImageSpec.from_info(manifest.encoders["vision_encoder"]))
    files = [
        png(make_image(w, h, seed)) for seed, (w, h) in enumerate([(224, 224), (640, 360), (90, 300)] * 3)
    ]
    pixels = preprocess(files[:8])
    model = hf_model(glm4v_tiny_model)
    patches, grid = hf_patches(pixels, VisionGeometry(224, 224, 14, 2, 2))
    with torch.no_grad():
        reference = torch.stack(
            model.model.get_image_features(torch.from_numpy(patches), torch.from_numpy(grid)).pooler_output
        ).numpy()
    batch8 = _run(glm4v_tiny_engines, manifest, "vision_encoder", "fp32", pixels)
    np.testing.assert_allclose(batch8, reference, atol=1e-4, rtol=1e-4)
    batch1 = _run(glm4v_tiny_engines, manifest, "vision_encoder", "fp32", pixels[5:6])
    np.testing.assert_allclose(batch1[0], batch8[5], atol=1e-5)


def test_audio_engine_equals_pytorch_on_speech_features(glm4v_tiny_model, glm4v_tiny_engines, manifest):
    preprocess = AudioPreprocessor(AudioSpec.from_info(manifest.encoders["audio_encoder"]))
    features, _ = preprocess([wav(speech_like(1 + 3 * i, seed=i)) for i in range(8)])
    with torch.no_grad():
        reference = load_audio_encoder(glm4v_tiny_model)(torch.from_numpy(features)).numpy()
    batch8 = _run(glm4v_tiny_engines, manifest, "audio_encoder", "fp32", features)
    np.testing.assert_allclose(batch8, reference, atol=1e-4, rtol=1e-4)
    batch1 = _run(glm4v_tiny_engines, manifest, "audio_encoder", "fp32", features[2:3])
    np.testing.assert_allclose(batch1[0], batch8[2], atol=1e-5)


@pytest.mark.parametrize("component", ENCODERS)
def test_fp16_encoders_track_fp32(glm4v_tiny_engines, manifest, component):
    if component == "vision_encoder":
        preprocess = ImagePreprocessor(ImageSpec.from_info(manifest.encoders[component]))
        batch = preprocess([png(make_image(224, 224, seed)) for seed in range(4)])
    else:
        preprocess = AudioPreprocessor(AudioSpec.from_info(manifest.encoders[component]))
        batch = preprocess([wav(speech_like(5, seed)) for seed in range(4)])[0]
    a = _run(glm4v_tiny_engines, manifest, component, "fp32", batch)
    b = _run(glm4v_tiny_engines, manifest, component, "fp16", batch)
    cosine = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cosine.min() > 0.999, cosine.min()


@pytest.mark.parametrize("component", ENCODERS)
def test_calibration_hooks_feed_the_fp32_engine(glm4v_tiny_model, glm4v_tiny_engines, manifest, component):
    """The int8 build calibrates each encoder on its hook's feeds: shipped images (scikit-image) and
    synthesized voice; they must fit the engine's declared input."""
    from builder.build.components import COMPONENTS
    from builder.config import CalibrationConfig
    from builder.model_dir import open_model_dir

    hook = next(c for c in COMPONENTS if c.name == component).calibration
    calibration = hook(open_model_dir(glm4v_tiny_model), CalibrationConfig(samples=2))
    feeds = list(calibration.feeds([]))
    assert calibration.samples == len(feeds) == 2 and len(calibration.digest) == 64
    info = manifest.encoders[component]
    for feed in feeds:
        (batch,) = feed.values()
        assert batch.shape == (1, *info["input_shape"]) and batch.dtype == np.float32
        assert (
            _run(glm4v_tiny_engines, manifest, component, "fp32", batch).shape[1] == info["tokens_per_item"]
        )
