"""TensorRT's calibration cache, the text format its implicit INT8 path (TensorRT 10.x) reads.

    TRT-<version>-EntropyCalibration2
    <tensor name>: <scale as 8 hex digits: the big-endian IEEE float32 bits>

`version` is TensorRT's integer NV_TENSORRT_VERSION (major·10000 + minor·100 + patch, e.g.
100800 for 10.8.0); TensorRT may ignore a cache written for another version, so a backend that
knows the installed version can rewrite the header with `write_cache(..., version=...)`.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from calibration.errors import CalibrationError

ALGORITHM = "EntropyCalibration2"
DEFAULT_VERSION = 100800  # TensorRT 10.8, the last line with implicit INT8 calibrators


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


def format_cache(scales: dict[str, float], version: int = DEFAULT_VERSION) -> str:
    lines = [f"TRT-{version}-{ALGORITHM}"]
    lines += [f"{name}: {scale_to_hex(scale)}" for name, scale in scales.items()]
    return "\n".join(lines) + "\n"


def write_cache(path: Path, scales: dict[str, float], version: int = DEFAULT_VERSION) -> None:
    """Write atomically (temporary name, then rename)."""
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
