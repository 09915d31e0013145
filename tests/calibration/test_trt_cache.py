"""TensorRT calibration cache: header, big-endian float32 hex, round trip, malformed files."""

from __future__ import annotations

import struct

import pytest

from calibration.errors import CalibrationError
from calibration.trt_cache import read_cache, write_cache


def test_cache_format_and_round_trip(tmp_path):
    path = tmp_path / "model.cache"
    scales = {"mul_47": 1.0, "_unsafe_view_3": 0.031496063, "input:0": 2.5e-3}
    write_cache(path, scales, version=100800)
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100800-EntropyCalibration2"
    assert lines[1] == "mul_47: 3f800000"  # 1.0 as big-endian IEEE float32
    assert lines[2] == f"_unsafe_view_3: {struct.pack('>f', 0.031496063).hex()}"
    version, algorithm, read = read_cache(path)
    assert (version, algorithm) == (100800, "EntropyCalibration2")
    assert read == {name: struct.unpack(">f", struct.pack(">f", s))[0] for name, s in scales.items()}
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


@pytest.mark.parametrize("text", ["", "not a cache\n", "TRT-x-EntropyCalibration2\n", "TRT-1-E\nmul: 12\n"])
def test_malformed_cache_is_a_clear_error(tmp_path, text):
    path = tmp_path / "bad.cache"
    path.write_text(text)
    with pytest.raises(CalibrationError, match=r"bad\.cache"):
        read_cache(path)
