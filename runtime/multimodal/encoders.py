"""Where image and audio embeddings come from: the MediaEncoders protocol, and LocalEncoders,
the in-process ONNX Runtime engines, each loaded on first use and unloadable when idle.

Inside Triton the same protocol is met by an adapter calling the encoder models (BLS); the prompt
builder does not care which.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from runtime.engine_loader import choose_component_precision, load_engine
from runtime.engines.base import Engine
from runtime.manifest import Manifest

VISION, AUDIO = "vision_encoder", "audio_encoder"


class MediaEncoders(Protocol):
    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """[N, 3, H, W] float32 → [N, T_img, hidden] float32."""
        ...

    def encode_audio(self, features: np.ndarray) -> np.ndarray:
        """[N, mel, frames] float32 → [N, T_aud, hidden] float32."""
        ...


class LocalEncoders:
    """MediaEncoders over engines in `engines_dir`; nothing is loaded until an encoder is used."""

    def __init__(
        self, engines_dir: Path, manifest: Manifest, precision: str = "auto", threads: int = 0
    ) -> None:
        self.engines_dir = engines_dir
        self.manifest = manifest
        self.requested = precision
        self.threads = threads
        self.max_batch = manifest.axes.get("batch", [1, 8])[1]
        self._engines: dict[str, Engine] = {}
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    def precision(self, component: str) -> str:
        return choose_component_precision(self.manifest, component, self.requested)

    @property
    def loaded(self) -> tuple[str, ...]:
        return tuple(sorted(self._engines))

    def _engine(self, component: str) -> Engine:
        engine = self._engines.get(component)
        if engine is None:
            precision = self.precision(component)
            engine = load_engine(self.manifest, self.engines_dir, component, precision, self.threads)
            self._engines[component] = engine
        self._last_used[component] = time.monotonic()
        return engine

    def encode(self, component: str, batch: np.ndarray) -> np.ndarray:
        """Run `component` (vision_encoder or audio_encoder) over `batch`, max_batch rows per call."""
        info = self.manifest.encoders[component]
        outputs = []
        with self._lock:  # one run at a time per engine (Engine is not thread-safe)
            engine = self._engine(component)
            for start in range(0, len(batch), self.max_batch):
                chunk = np.ascontiguousarray(batch[start : start + self.max_batch], np.float32)
                (out,) = engine.run({info["input"]: chunk}, [info["output"]])
                outputs.append(out.astype(np.float32, copy=False))
            self._last_used[component] = time.monotonic()
        return np.concatenate(outputs)

    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.encode(VISION, pixel_values)

    def encode_audio(self, features: np.ndarray) -> np.ndarray:
        return self.encode(AUDIO, features)

    def unload_idle(self, seconds: float) -> list[str]:
        """Drop encoders unused for `seconds` (0 = all); they reload on next use. Returns their names."""
        now = time.monotonic()
        with self._lock:
            idle = [name for name in self._engines if now - self._last_used[name] >= seconds]
            for name in idle:
                del self._engines[name]
        return idle
