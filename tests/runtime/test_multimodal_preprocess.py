"""Image and audio files → encoder inputs: Hugging Face's preprocessing, the resize and clip
policies, and clear refusals of bad media. Test media are generated here (PIL, numpy)."""

from __future__ import annotations

import io
import struct
import wave
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw
from transformers import WhisperFeatureExtractor
from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

from builder.export.vision_encoder import VisionGeometry, hf_patches
from runtime.errors import MediaInputError, MissingEncoderError, RuntimeUserError
from runtime.manifest import Manifest
from runtime.multimodal import MultimodalPromptBuilder
from runtime.multimodal.audio import AudioPreprocessor, AudioSpec
from runtime.multimodal.image import ImagePreprocessor, ImageSpec, letterbox
from runtime.tokenizer import TextTokenizer


def make_image(width: int, height: int, seed: int) -> Image.Image:
    """Coloured rectangles on a coloured background: structure the encoders can tell apart."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(4, width // 2 + 5)), int(rng.integers(4, height // 2 + 5))
        draw.rectangle([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def speech_like(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """A few gliding harmonics with a syllable-rate envelope, in [-0.5, 0.5]."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.25 * voice * envelope / 2.3).astype(np.float32)


def wav(samples: np.ndarray, rate: int = 16000, channels: int = 1) -> bytes:
    pcm = np.clip(samples * 32767, -32768, 32767).astype("<i2")
    pcm = np.repeat(pcm, channels)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def manifest(glm4v_tiny_engines) -> Manifest:
    return Manifest.load(glm4v_tiny_engines)


@pytest.fixture(scope="module")
def images(manifest) -> ImagePreprocessor:
    return ImagePreprocessor(ImageSpec.from_info(manifest.encoders["vision_encoder"]))


@pytest.fixture(scope="module")
def audio(manifest) -> AudioPreprocessor:
    return AudioPreprocessor(AudioSpec.from_info(manifest.encoders["audio_encoder"]))


def _hf_processor(images: ImagePreprocessor) -> Glm4vImageProcessorPil:
    config = {k: v for k, v in images.spec.processor.items() if k != "image_processor_type"}
    return Glm4vImageProcessorPil(**config)


def _geometry(images: ImagePreprocessor) -> VisionGeometry:
    return VisionGeometry(images.spec.height, images.spec.width, 14, 2, 2)


@pytest.mark.parametrize("side", [224, 448, 517])
def test_square_images_match_hf_processor_exactly(images, side):
    """At the engine's aspect ratio our pixels are Hugging Face's, bit for bit, whatever the size."""
    image = make_image(side, side, seed=side)
    ours = images([png(image)])
    reference = _hf_processor(images)(images=[image], return_tensors="np")
    assert reference["image_grid_thw"].tolist() == [[1, 16, 16]], "HF resizes these to the engine size"
    patches, _ = hf_patches(ours, _geometry(images))
    np.testing.assert_array_equal(patches, reference["pixel_values"])


def test_other_aspect_ratios_are_letterboxed(images):
    """300×150 → scaled to 224×112, centred, padded with the mean colour (normalises to ~0)."""
    image = make_image(300, 150, seed=3)
    (ours,) = images([png(image)])
    assert ours.shape == (3, 224, 224)
    pad = np.abs(np.concatenate([ours[:, :56], ours[:, -56:]], axis=1))
    assert pad.max() < 0.01, "padding rows hold the normalised mean colour"
    assert np.abs(ours[:, 56:168]).mean() > 0.3, "the picture sits in the middle rows"
    canvas = letterbox(image, images.spec)
    reference = _hf_processor(images)(images=[canvas], return_tensors="np")
    patches, _ = hf_patches(ours[None], _geometry(images))
    np.testing.assert_array_equal(patches, reference["pixel_values"])


def test_audio_features_match_whisper_extractor_and_windows(audio):
    """Short clips are padded to 30 s; a 45 s clip becomes two windows, the second padded."""
    extractor = WhisperFeatureExtractor.from_dict(audio.spec.extractor)
    short, long = speech_like(3.5, seed=1), speech_like(45, seed=2)
    features, windows = audio([wav(short), wav(long)])
    assert windows == [1, 2] and features.shape == (3, 80, 3000)
    pcm = [np.frombuffer(wav(x), "<i2", offset=44).astype(np.float32) / 32768 for x in (short, long)]
    reference = extractor(
        [pcm[0], pcm[1][:480000], pcm[1][480000:]], sampling_rate=16000, return_tensors="np"
    )["input_features"]
    np.testing.assert_allclose(features, reference, atol=1e-6)
    stereo, _ = audio([wav(short, channels=2)])
    np.testing.assert_allclose(stereo, features[:1], atol=1e-6)


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (with a valid CRC) claims a size the data does not have."""
    data = png(Image.new("RGB", (32, 32)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


BAD_IMAGES = {
    "text file": (b"hello, not an image", "not an image PIL can read"),
    "empty file": (b"", "is empty"),
    "truncated PNG": (png(make_image(64, 64, 1))[:200], "damaged or truncated"),
    "too small": (png(make_image(20, 40, 1)), "at least 28×28"),
    "too large": (_png_header_claiming(10000, 10000), "larger than the 64 MP"),
    "extreme aspect": (png(Image.new("RGB", (7000, 30))), "aspect ratio above 200"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_images_are_refused_clearly(images, case):
    data, message = BAD_IMAGES[case]
    with pytest.raises(MediaInputError, match=message) as error:
        images([png(make_image(64, 64, 0)), data])
    assert "image 2" in str(error.value)


def _float_wav() -> bytes:
    data = bytearray(wav(np.zeros(1600, np.float32)))
    data[20:22] = struct.pack("<H", 3)  # format tag 3 = IEEE float
    return bytes(data)


BAD_AUDIO = {
    "8 kHz": (wav(speech_like(1, 0, rate=8000), rate=8000), "sampled at 8000 Hz"),
    "FLAC": (b"fLaC\x00\x00\x00\x22" + bytes(64), "a FLAC file"),
    "MP3": (b"ID3\x04" + bytes(64), "a MP3 file"),
    "float WAV": (_float_wav(), "unsupported or damaged WAV"),
    "no samples": (wav(np.zeros(0, np.float32)), "has no samples"),
    "too long": (wav(np.zeros(16000 * 241, np.float32)), "at most 240 s"),
}


@pytest.mark.parametrize("case", BAD_AUDIO)
def test_bad_audio_is_refused_clearly(audio, case):
    data, message = BAD_AUDIO[case]
    with pytest.raises(MediaInputError, match=message):
        audio([data])


class NoCalls:
    """Encoders that must not be reached: bad input is refused before any engine runs."""

    def encode_images(self, pixel_values):
        raise AssertionError("encoder called")

    encode_audio = encode_images


def _user(*parts) -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "hi"}]}]


def test_prompt_builder_refuses_before_encoding(glm4v_tiny_engines, manifest):
    builder = MultimodalPromptBuilder(
        glm4v_tiny_engines, manifest, TextTokenizer(glm4v_tiny_engines / "tokenizer")
    )
    image = png(make_image(64, 64, 0))
    with pytest.raises(MediaInputError, match="at most 8 per prompt"):
        builder.prepare(_user(*[{"type": "image"}] * 9), [image] * 9, [], NoCalls())
    with pytest.raises(MediaInputError, match="2 image part"):
        builder.prepare(_user({"type": "image"}, {"type": "image"}), [image], [], NoCalls())
    with pytest.raises(MediaInputError, match="expected 'text', 'image' or 'audio'"):
        builder.prepare(_user({"type": "video"}), [], [], NoCalls())
    with pytest.raises(MediaInputError, match="sampled at 8000 Hz"):
        builder.prepare(
            _user({"type": "image"}, {"type": "audio"}), [image], [BAD_AUDIO["8 kHz"][0]], NoCalls()
        )


def test_media_for_a_model_without_encoders_is_refused(smollm2_engines):
    manifest = Manifest.load(smollm2_engines)
    assert not manifest.encoders
    builder = MultimodalPromptBuilder(smollm2_engines, manifest, TextTokenizer(smollm2_engines / "tokenizer"))
    with pytest.raises(MissingEncoderError, match="no vision encoder") as error:
        builder.prepare(_user({"type": "image"}), [png(make_image(64, 64, 0))], [], NoCalls())
    assert isinstance(error.value, RuntimeUserError)
    with pytest.raises(MissingEncoderError, match="no audio encoder"):
        builder.prepare(_user({"type": "audio"}), [], [wav(speech_like(1, 0))], NoCalls())
