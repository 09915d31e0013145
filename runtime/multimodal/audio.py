"""Audio files → Whisper log-mel windows [n, mel, frames] for the audio encoder.

Accepted: WAV with integer PCM samples (8/16/24/32-bit), mono or multi-channel (channels are
averaged), at exactly the model's sampling rate (16 kHz for Whisper); anything else is refused with
a message saying how to convert it. Clip policy: a clip is cut into consecutive windows of the
feature extractor's `chunk_length` (30 s); each window, the last one zero-padded, is one encoder
input, and its tokens follow the previous window's inside the clip's single
<|begin_of_audio|>…<|end_of_audio|> span. Features come from Hugging Face's own
WhisperFeatureExtractor built from the model's preprocessor config.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

import numpy as np

from runtime.errors import MediaInputError

MAX_WINDOWS = 8  # per clip: 4 minutes of 30 s windows, one encoder batch
# First bytes of formats people send instead of WAV, to name them in the message.
SIGNATURES = {
    b"fLaC": "FLAC",
    b"OggS": "Ogg",
    b"ID3": "MP3",
    b"\xff\xfb": "MP3",
    b"\xff\xf3": "MP3",
    b"\x1aE\xdf\xa3": "WebM/Matroska",
}


@dataclass(frozen=True)
class AudioSpec:
    """From the manifest's `encoders.audio_encoder` block."""

    sampling_rate: int
    window_samples: int
    extractor: dict  # the WhisperFeatureExtractor's preprocessor_config.json

    @classmethod
    def from_info(cls, info: dict) -> AudioSpec:
        config = info["preprocessor"]
        return cls(config["sampling_rate"], config["n_samples"], config)


def _convert_hint(rate: int) -> str:
    return f"convert it with e.g. `ffmpeg -i INPUT -ac 1 -ar {rate} -c:a pcm_s16le OUTPUT.wav`"


def decode_wav(data: bytes, label: str, rate: int) -> np.ndarray:
    """WAV bytes → mono float32 samples in [-1, 1] at `rate` Hz."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        kind = next((name for sig, name in SIGNATURES.items() if data.startswith(sig)), None)
        found = f"a {kind} file" if kind else "not a WAV file" if data else "empty"
        raise MediaInputError(f"{label} is {found}; audio must be WAV (PCM); {_convert_hint(rate)}")
    try:
        with wave.open(io.BytesIO(data)) as wav:
            channels, width, found_rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as error:
        raise MediaInputError(
            f"{label}: unsupported or damaged WAV ({error}); only integer PCM is read; {_convert_hint(rate)}"
        ) from None
    if found_rate != rate:
        raise MediaInputError(
            f"{label} is sampled at {found_rate} Hz but the audio encoder takes {rate} Hz; "
            f"resample it: {_convert_hint(rate)}"
        )
    if width == 3:  # 24-bit: widen to 32-bit little-endian by hand (numpy has no int24)
        raw = np.frombuffer(frames, np.uint8).reshape(-1, 3)
        samples = (np.pad(raw, ((0, 0), (1, 0))).view("<i4")[:, 0]).astype(np.float32) / 2**31
    elif width == 1:
        samples = (np.frombuffer(frames, np.uint8).astype(np.float32) - 128) / 128
    else:
        samples = np.frombuffer(frames, f"<i{width}").astype(np.float32) / 2 ** (8 * width - 1)
    samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    if samples.size == 0:
        raise MediaInputError(f"{label} has no samples; send a clip of at least a few milliseconds")
    return samples


class AudioPreprocessor:
    def __init__(self, spec: AudioSpec) -> None:
        from transformers import WhisperFeatureExtractor

        self.spec = spec
        self.hf = WhisperFeatureExtractor.from_dict(spec.extractor)

    def windows(self, samples: np.ndarray, label: str) -> list[np.ndarray]:
        size = self.spec.window_samples
        count = -(-len(samples) // size)
        if count > MAX_WINDOWS:
            seconds = len(samples) / self.spec.sampling_rate
            limit = MAX_WINDOWS * size / self.spec.sampling_rate
            raise MediaInputError(
                f"{label} lasts {seconds:.0f} s; clips may last at most {limit:.0f} s, split it"
            )
        return [samples[i * size : (i + 1) * size] for i in range(count)]

    def features(self, windows: list[np.ndarray]) -> np.ndarray:
        """Waveform windows → [n, mel, frames] float32 (each padded to the full window)."""
        out = self.hf(windows, sampling_rate=self.spec.sampling_rate, return_tensors="np")
        return out["input_features"].astype(np.float32, copy=False)

    def __call__(self, data: list[bytes]) -> tuple[np.ndarray, list[int]]:
        """Audio files → (features [total windows, mel, frames], windows per clip)."""
        clips = [
            self.windows(decode_wav(item, f"audio {i + 1}", self.spec.sampling_rate), f"audio {i + 1}")
            for i, item in enumerate(data)
        ]
        return self.features([w for clip in clips for w in clip]), [len(clip) for clip in clips]
