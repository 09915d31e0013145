"""TensorRT's INT8 calibration cache, read for the TensorRT 10.x implicit-quantization path.

Format (written by the INT8 calibration step beside the engines): a header line
`TRT-<version>-EntropyCalibration2`, then one `<tensor name>: <8 hex digits>` line per tensor, the
hex digits being the big-endian IEEE float32 scale (amax / 127). TensorRT 10 reads it through an
`IInt8EntropyCalibrator2` whose `read_calibration_cache` returns the file's bytes (its header
naming the TensorRT that builds) and whose `get_batch` returns None (no data: the cache is
complete, so TensorRT never asks for batches).
TensorRT 11 removed implicit calibration; there the Q/DQ graph carries the same scales.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError

HEADER = re.compile(r"^TRT-(\d+)-EntropyCalibration2$")
ENTRY = re.compile(r"^(?P<name>.+): (?P<hex>[0-9a-fA-F]{8})$")


class CalibrationCacheError(BuildError):
    """The calibration cache file is missing or not in TensorRT's format."""


@dataclass(frozen=True)
class CalibrationCache:
    path: Path
    version: int  # the TensorRT version number in the header, e.g. 100300 for 10.3.0
    scales: dict[str, float]  # tensor name -> scale
    raw: bytes


def parse_calibration_cache(path: Path) -> CalibrationCache:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise CalibrationCacheError(f"cannot read calibration cache {path}: {error}") from None
    lines = raw.decode("ascii", errors="replace").splitlines()
    header = HEADER.match(lines[0].strip()) if lines else None
    if header is None:
        raise CalibrationCacheError(
            f"{path} does not start with 'TRT-<version>-EntropyCalibration2' (found "
            f"{lines[0][:60]!r} if lines else 'an empty file'); rerun `autoglm-trt calibrate`"
        )
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        entry = ENTRY.match(line.strip())
        if entry is None:
            raise CalibrationCacheError(
                f"{path}:{number}: expected '<tensor name>: <8 hex digits>', found {line[:80]!r}"
            )
        scales[entry["name"]] = struct.unpack(">f", bytes.fromhex(entry["hex"]))[0]
    return CalibrationCache(path, int(header[1]), scales, raw)


def find_calibration_cache(component: str, *directories: Path) -> Path | None:
    """The first file named after `component` in `directories` whose first line is a TensorRT
    entropy-calibration header (found by content, whatever the calibration step names it)."""
    for directory in directories:
        for candidate in sorted(directory.glob(f"{component}*")):
            if not candidate.is_file() or candidate.suffix in (".onnx", ".plan", ".json"):
                continue
            with candidate.open("rb") as handle:
                first = handle.readline(200).decode("ascii", errors="replace").strip()
            if HEADER.match(first):
                return candidate
    return None


def with_version(cache: CalibrationCache, version: int) -> bytes:
    """`cache`'s bytes with its header naming TensorRT `version`. TensorRT may skip a cache written
    for another version; ours holds our own entropy-calibration scales, not a record of a
    TensorRT run, so they are valid for whichever TensorRT builds from them."""
    body = cache.raw.split(b"\n", 1)[1] if b"\n" in cache.raw else b""
    return f"TRT-{version}-EntropyCalibration2\n".encode() + body


def make_entropy_calibrator(trt, cache: CalibrationCache, version: int):
    """An IInt8EntropyCalibrator2 that only replays `cache`, labelled for TensorRT `version`
    (TensorRT 10.x; deprecated since 10.1)."""
    raw = with_version(cache, version)

    class CacheOnlyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 trampolines need the base __init__

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):  # no data: TensorRT uses the cache and never calibrates
            return None

        def read_calibration_cache(self):
            return raw

        def write_calibration_cache(self, data) -> None:  # ours is the source of truth
            return None

    return CacheOnlyCalibrator()
