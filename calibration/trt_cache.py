"""TensorRT's calibration cache, the text format its implicit INT8 path (TensorRT 10.x) reads.

    TRT-<version>-EntropyCalibration2
    <tensor name>: <scale as 8 hex digits: the big-endian IEEE float32 bits>

`version` is TensorRT's integer NV_TENSORRT_VERSION (major·10000 + minor·100 + patch, e.g.
100800 for 10.8.0). TensorRT may skip a cache written for another version, so the header names
the installed TensorRT, or 10.8 (DEFAULT_VERSION) where none is installed; the TensorRT build step
relabels the header for the TensorRT that builds (builder/build/tensorrt_calibration.py).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from calibration.errors import CalibrationError
from runtime.compat import tensorrt_version

ALGORITHM = "EntropyCalibration2"
DEFAULT_VERSION = 100800  # TensorRT 10.8, a release of the last major with implicit INT8 calibrators


def version_number(version: str) -> int:
    """'10.13.3.9' -> 101303 (NV_TENSORRT_VERSION: build numbers and post-release tags drop)."""
    parts = [int(match[0]) if (match := re.match(r"\d+", p)) else 0 for p in version.split(".")[:3]]
    major, minor, patch = [*parts, 0, 0][:3]
    return major * 10000 + minor * 100 + patch


def installed_tensorrt_version() -> int | None:
    """The installed TensorRT's version number, or None where TensorRT is absent."""
    version = tensorrt_version()
    return version_number(version) if version else None


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


def format_cache(scales: dict[str, float], version: int = DEFAULT_VERSION) -> str:
    lines = [f"TRT-{version}-{ALGORITHM}"]
    lines += [f"{name}: {scale_to_hex(scale)}" for name, scale in scales.items()]
    return "\n".join(lines) + "\n"


def write_cache(path: Path, scales: dict[str, float], version: int | None = None) -> None:
    """Write atomically (temporary name, then rename). `version` None: the installed TensorRT's,
    else DEFAULT_VERSION."""
    if version is None:
        version = installed_tensorrt_version() or DEFAULT_VERSION
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(format_cache(scales, version))
    os.replace(tmp, path)


def read_cache(path: Path) -> tuple[int, str, dict[str, float]]:
    """(TensorRT version, algorithm, {tensor name: scale}) from a cache file."""
    lines = path.read_text().splitlines()
    header = lines[0].split("-") if lines else []
    if len(header) != 3 or header[0] != "TRT" or not header[1].isdigit():
        raise CalibrationError(
            f"{path} is not a TensorRT calibration cache: its first line should be "
            f"'TRT-<version>-{ALGORITHM}'; recreate it with `autoglm-trt calibrate`"
        )
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(": ")
        if not sep or len(value) != 8:
            raise CalibrationError(f"{path}:{number} is not '<tensor>: <8 hex digits>': {line!r}")
        scales[name] = hex_to_scale(value)
    return int(header[1]), header[2], scales
