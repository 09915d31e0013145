"""The one place that knows which library versions an engine is tied to.

An ONNX Runtime engine (an optimized graph) is tied to the ORT minor version that wrote it; a
TensorRT plan is tied to the exact TensorRT version (and the GPU's compute capability).
"""

from __future__ import annotations

from importlib import metadata

# Distributions that install the `tensorrt` module: the metapackage, the per-CUDA packages (the
# `tensorrt` extra pins -cu12) and the bindings wheels they pull in.
TENSORRT_DISTRIBUTIONS = (
    "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11",
    "tensorrt-cu12-bindings", "tensorrt-cu13-bindings", "tensorrt-cu11-bindings",
)  # fmt: skip


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def tensorrt_version() -> str | None:
    """The installed TensorRT's version from package metadata (importing tensorrt would load its
    GPU libraries), or None where TensorRT is absent."""
    return next(filter(None, map(_version, TENSORRT_DISTRIBUTIONS)), None)


def runtime_versions(backend: str) -> dict[str, str]:
    """Versions that must match between build and load for engines of `backend`."""
    if backend == "onnxruntime":
        version = _version("onnxruntime") or _version("onnxruntime-gpu") or "absent"
        return {"onnxruntime": ".".join(version.split(".")[:2])}
    if backend == "tensorrt":  # a plan runs only on its exact TensorRT and GPU architecture
        return {"tensorrt": tensorrt_version() or "absent", "gpu_sm": gpu_compute_capability()}
    raise ValueError(f"unknown backend {backend!r}")


def build_tool_versions() -> dict[str, str]:
    """Everything that shaped an export, recorded for the record (not enforced)."""
    names = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "numpy")
    return {name: _version(name) or "absent" for name in names}


def gpu_compute_capability() -> str:
    """Compute capability of GPU 0 ("8.9" for an L4), or "absent" (no GPU or no cuda-python)."""
    from runtime import cuda

    try:
        return cuda.compute_capability(0) if cuda.device_count() else "absent"
    except cuda.CudaError:
        return "absent"
