"""The runtime refuses engines that do not match their manifest, and says what to rebuild."""

from __future__ import annotations

import json
import shutil

import pytest

from runtime import decoder_io as io
from runtime.engine_loader import load_engine
from runtime.errors import EngineDirError, StaleEngineError
from runtime.manifest import Manifest


@pytest.fixture
def engines_copy(glm4v_tiny_engines, tmp_path):
    return shutil.copytree(glm4v_tiny_engines, tmp_path / "engines")


def test_loads_a_matching_engine(glm4v_tiny_engines):
    manifest = Manifest.load(glm4v_tiny_engines)
    engine = load_engine(manifest, glm4v_tiny_engines, "text_decoder", "fp32")
    assert str(engine.input_dtypes[io.POOL_DTYPE_INPUT]) == "float32"
    assert engine.kv_slots  # the fused engine updates its past in per-sequence slots
    fp16 = load_engine(manifest, glm4v_tiny_engines, "text_decoder", "fp16")
    assert str(fp16.input_dtypes[io.POOL_DTYPE_INPUT]) == "float16"


def test_tampered_engine_is_refused(engines_copy):
    manifest = Manifest.load(engines_copy)
    engine_file = engines_copy / manifest.entry("text_decoder", "fp32").file
    data = bytearray(engine_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine_file.write_bytes(bytes(data))
    with pytest.raises(
        StaleEngineError, match=r"does not match its manifest hash.*autoglm-trt build --model"
    ):
        load_engine(manifest, engines_copy, "text_decoder", "fp32")


def test_engine_from_other_tool_version_is_refused(engines_copy):
    path = engines_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["engines"]["text_decoder"]["fp32"]["tools"] = {"onnxruntime": "0.9"}
    path.write_text(json.dumps(data))
    with pytest.raises(StaleEngineError, match=r"built with .*0\.9.*rebuild"):
        load_engine(Manifest.load(engines_copy), engines_copy, "text_decoder", "fp32")


def test_missing_engine_file_and_precision(engines_copy):
    manifest = Manifest.load(engines_copy)
    with pytest.raises(EngineDirError, match=r"no int8 text_decoder engine \(built: fp16, fp32\)"):
        load_engine(manifest, engines_copy, "text_decoder", "int8")
    (engines_copy / manifest.entry("text_decoder", "fp16").file).unlink()
    with pytest.raises(StaleEngineError, match="is missing"):
        load_engine(manifest, engines_copy, "text_decoder", "fp16")


def test_directory_without_manifest(tmp_path):
    with pytest.raises(EngineDirError, match=r"no manifest\.json"):
        Manifest.load(tmp_path)
    with pytest.raises(EngineDirError, match="does not exist"):
        Manifest.load(tmp_path / "nowhere")
