"""Calibration samples: text passages, RGB images and mono audio clips, in a fixed order.

Each reader takes an optional user directory (`--data DIR`) and a sample count, and returns a
`SampleSet`: a description, the count, and a re-iterable stream of samples, read lazily so that
memory does not grow with the count. Files are taken in sorted path order (recursively), so a
calibration is reproducible. Without a directory: text is the calibration part of Python's
documentation topics (calibration/corpus.py), images are scikit-image's sample photographs,
speech is Debian's pocketsphinx-testdata where installed (no Python package ships speech).
"""

from __future__ import annotations

import importlib.util
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from calibration import corpus
from calibration.errors import CalibrationError

TEXT_SUFFIXES = (".txt", ".md", ".rst")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
AUDIO_SUFFIXES = (".wav",)

T = TypeVar("T")


@dataclass(frozen=True)
class AudioClip:
    samples: np.ndarray  # float32 [n] in [-1, 1], mono
    rate: int  # samples per second


@dataclass(frozen=True)
class SampleSet(Generic[T]):
    description: str  # where the samples come from, for logs and the manifest
    count: int
    stream: Callable[[], Iterator[T]]  # a fresh iterator over exactly `count` samples

    def __iter__(self) -> Iterator[T]:
        return self.stream()


def _files(data: Path, suffixes: tuple[str, ...], kind: str) -> list[Path]:
    hint = f"give --data a directory of {kind} files ({', '.join(suffixes)})"
    if not data.exists():
        raise CalibrationError(f"calibration data directory {data} does not exist; {hint}")
    if not data.is_dir():
        raise CalibrationError(f"calibration data {data} is a file, not a directory; {hint}")
    try:
        files = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    except OSError as error:
        raise CalibrationError(f"calibration data directory {data} is unreadable ({error}); {hint}") from None
    if not files:
        raise CalibrationError(f"calibration data directory {data} has no {kind} files; {hint}")
    return files


def _enough(available: int, wanted: int, source: str) -> None:
    if wanted < 1:
        raise CalibrationError(f"--samples {wanted} is not a sample count; give at least 1")
    if available < wanted:
        raise CalibrationError(
            f"{source} yields {available} samples but --samples {wanted} were requested; "
            f"add more data or lower --samples to {available} or fewer"
        )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CalibrationError(
            f"calibration text file {path} is unreadable ({error}); fix or remove it"
        ) from None


def text_samples(data: Path | None, samples: int) -> SampleSet[str]:
    """Passages of at most ~1,200 characters, split at blank lines, in file order."""
    if data is None:
        source = "Python documentation topics (calibration part)"
        make = corpus.calibration_passages
    else:
        files = _files(data, TEXT_SUFFIXES, "text")
        source = f"{len(files)} text files in {data}"

        def make() -> Iterator[str]:
            for file in files:
                yield from corpus.passages(_read_text(file))

    _enough(sum(1 for _ in make()), samples, source)
    return SampleSet(f"{source}, {samples} passages", samples, lambda: islice(make(), samples))


def default_image_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise CalibrationError(
            "scikit-image is not installed, so there are no default images; pass --data DIR"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as error:
        if path.suffix.lower() in (".tif", ".tiff"):  # float or planar TIFFs Pillow cannot decode
            return _read_tiff(path, error)
        raise CalibrationError(
            f"calibration image {path} is unreadable ({error}); fix or remove it"
        ) from None


def _read_tiff(path: Path, pillow_error: Exception) -> np.ndarray:
    """First page of a TIFF as uint8 RGB [H, W, 3] (channel-first and float pages converted)."""
    import tifffile

    try:
        page = np.asarray(tifffile.imread(path, key=0))
    except (OSError, ValueError, tifffile.TiffFileError) as error:
        raise CalibrationError(
            f"calibration image {path} is unreadable ({pillow_error}; {error}); fix or remove it"
        ) from None
    if page.ndim == 3 and page.shape[0] in (3, 4) and page.shape[-1] not in (3, 4):
        page = np.moveaxis(page, 0, -1)  # planar [C, H, W]
    if page.ndim == 2:
        page = np.stack([page] * 3, axis=-1)
    if page.dtype.kind == "f":
        page = np.clip(page * (255.0 if page.max() <= 1.0 else 1.0), 0, 255)
    return np.ascontiguousarray(page[..., :3]).astype(np.uint8)


def image_samples(data: Path | None, samples: int) -> SampleSet[np.ndarray]:
    """RGB images as uint8 [H, W, 3], one per file."""
    directory = data if data is not None else default_image_dir()
    files = _files(directory, IMAGE_SUFFIXES, "image")
    source = f"{len(files)} images in {directory}" if data is not None else "scikit-image sample images"
    _enough(len(files), samples, source)
    return SampleSet(f"{source}, {samples} images", samples, lambda: map(_read_image, files[:samples]))


def _read_wav(path: Path) -> AudioClip:
    try:
        with wave.open(str(path), "rb") as clip:
            width, channels, rate = clip.getsampwidth(), clip.getnchannels(), clip.getframerate()
            raw = clip.readframes(clip.getnframes())
    except (OSError, EOFError, wave.Error) as error:
        raise CalibrationError(
            f"calibration audio {path} is unreadable ({error}); use PCM WAV files, or fix or remove it"
        ) from None
    if width not in (1, 2, 4):
        raise CalibrationError(
            f"calibration audio {path} has {8 * width}-bit samples; use 8, 16 or 32-bit PCM"
        )
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    pcm = np.frombuffer(raw, dtype).astype(np.float32)
    if width == 1:
        pcm -= 128.0
    pcm /= float(2 ** (8 * width - 1))
    return AudioClip(pcm.reshape(-1, channels).mean(axis=1), rate)


# Debian's pocketsphinx-testdata: ten 16 kHz English speech clips (read speech, card names), the
# only speech a package ships (`apt-get install pocketsphinx-testdata`); none comes from PyPI.
SYSTEM_SPEECH = Path("/usr/share/pocketsphinx/test/data")


def default_speech(samples: int) -> SampleSet[AudioClip] | None:
    """Up to `samples` clips of the installed system speech (all ten at most), or None if absent."""
    files = sorted(SYSTEM_SPEECH.rglob("*.wav")) if SYSTEM_SPEECH.is_dir() else []
    if not files:
        return None
    files = files[:samples]
    source = f"{len(files)} speech clips of Debian's pocketsphinx-testdata ({SYSTEM_SPEECH})"
    return SampleSet(source, len(files), lambda: map(_read_wav, files))


def audio_samples(data: Path | None, samples: int) -> SampleSet[AudioClip]:
    """Mono float32 clips at their own sample rate, one per WAV file."""
    if data is None:
        raise CalibrationError(
            "no default speech ships with the Python packages; pass --data DIR with PCM WAV speech clips "
            "or install Debian's pocketsphinx-testdata"
        )
    files = _files(data, AUDIO_SUFFIXES, "audio")
    source = f"{len(files)} clips in {data}"
    _enough(len(files), samples, source)
    return SampleSet(f"{source}, {samples} clips", samples, lambda: map(_read_wav, files[:samples]))
