"""The TensorRT backend. TensorRT is imported lazily: it is absent on CPU-only machines."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from builder.errors import BackendUnavailableError


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def require_tensorrt() -> None:
    if not tensorrt_available():
        raise BackendUnavailableError(
            "TensorRT is not installed: install it on a machine with an NVIDIA GPU "
            "(pip install 'autoglm-trt[tensorrt]'), or build with --backend onnxruntime"
        )


def trt_engine_from_onnx(graph: Path, engine: Path) -> dict:
    require_tensorrt()
    raise BackendUnavailableError(
        "the TensorRT engine builder is not part of this release yet; build with --backend onnxruntime"
    )
