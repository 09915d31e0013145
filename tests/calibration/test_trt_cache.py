"""TensorRT calibration cache: header, big-endian float32 hex, round trip, malformed files."""

from __future__ import annotations

import struct
from importlib import metadata

import pytest

from calibration import trt_cache
from calibration.errors import CalibrationError
from calibration.trt_cache import read_cache, write_cache
from runtime import compat


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


@pytest.mark.parametrize(
    ("text", "number"),
    [("10.8.0", 100800), ("10.13.3.9.post1", 101303), ("11.4.0.106", 110400), ("10.7", 100700)],
)
def test_version_number(text, number):
    assert trt_cache.version_number(text) == number


def test_header_names_the_installed_tensorrt(tmp_path, monkeypatch):
    """TensorRT may skip a cache labelled for another version; the `tensorrt` extra installs
    tensorrt-cu12, not the `tensorrt` metapackage, so both names are looked up."""
    installed = {"tensorrt-cu12": "10.3.0.26"}

    def version(name: str) -> str:
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(compat.metadata, "version", version)
    path = tmp_path / "model.cache"
    write_cache(path, {"x": 1.0})
    assert path.read_text().splitlines()[0] == "TRT-100300-EntropyCalibration2"
    installed.clear()  # no TensorRT here: the default, which the TensorRT build step relabels
    write_cache(path, {"x": 1.0})
    assert read_cache(path)[0] == trt_cache.DEFAULT_VERSION
