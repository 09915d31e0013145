"""runtime/cuda.py's device count reports why CUDA is unusable instead of "0 devices", and the
`tensorrt` extra pins TensorRT and cuda-python to one CUDA major. cuda-python is absent here: its
runtime module is replaced by a stand-in returning the (error, value) tuples it documents."""

from __future__ import annotations

import tomllib
from enum import Enum
from pathlib import Path
from types import SimpleNamespace

import pytest
from packaging.requirements import Requirement

from runtime import cuda


class _Error(Enum):
    cudaSuccess = 0
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorUnknown = 999


def _runtime(count_result, driver: int = 11040, runtime: int = 12060):
    def device_count():
        if isinstance(count_result, Exception):
            raise count_result
        return count_result

    return SimpleNamespace(
        cudaError_t=_Error,
        cudaGetDeviceCount=device_count,
        cudaGetErrorName=lambda error: (_Error.cudaSuccess, error.name.encode()),
        cudaDriverGetVersion=lambda: (_Error.cudaSuccess, driver),
        cudaRuntimeGetVersion=lambda: (_Error.cudaSuccess, runtime),
    )


def test_device_count(monkeypatch):
    monkeypatch.setattr(cuda, "_runtime", lambda: _runtime((_Error.cudaSuccess, 2)))
    assert cuda.device_count() == 2
    monkeypatch.setattr(cuda, "_runtime", lambda: _runtime((_Error.cudaErrorNoDevice, 0)))
    assert cuda.device_count() == 0  # a driver that sees no GPU: the one case that is "0"


@pytest.mark.parametrize(
    ("result", "match"),
    [
        (RuntimeError("Failed to dlopen libcuda.so.1"), "no NVIDIA driver could be loaded .*libcuda"),
        (
            (_Error.cudaErrorInsufficientDriver, 0),
            "driver supports CUDA 11.4, but cuda-python here is built for CUDA 12.6",
        ),
        ((_Error.cudaErrorUnknown, 0), "cudaGetDeviceCount failed: cudaErrorUnknown"),
    ],
)
def test_device_count_names_what_is_wrong(monkeypatch, result, match):
    monkeypatch.setattr(cuda, "_runtime", lambda: _runtime(result))
    with pytest.raises(cuda.CudaError, match=match):
        cuda.device_count()


def test_tensorrt_extra_pins_one_cuda_major():
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    extra = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["tensorrt"]
    wanted = {Requirement(text).name: Requirement(text).specifier for text in extra}
    assert set(wanted) == {"tensorrt-cu12", "cuda-python", "cupy-cuda12x"}  # not the CUDA 13 metapackage
    assert "12.9.5" in wanted["cuda-python"] and "13.0.0" not in wanted["cuda-python"]
    assert "10.0.1" in wanted["tensorrt-cu12"] and "11.4.0.106" in wanted["tensorrt-cu12"]
    assert "14.2.0" in wanted["cupy-cuda12x"]
