"""`autoglm-trt build`: the manifest, the fusion report, and skipping unchanged work."""

from __future__ import annotations

import json
import shutil

from runtime.manifest import Manifest
from runtime.onnx_files import sha256_file
from tests.conftest import run_cli


def test_manifest_describes_each_engine(built):
    model_dir, engines = built
    manifest = Manifest.load(engines)
    assert manifest.precisions("text_decoder") == ["fp16", "fp32"]
    assert manifest.model["source_dir"] == str(model_dir)
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= manifest.build_tools.keys()
    for precision in ("fp32", "fp16"):
        entry = manifest.entry("text_decoder", precision)
        assert entry.backend == "onnxruntime"
        assert entry.sha256 == sha256_file(engines / entry.file)
        assert {"onnxruntime"} == entry.tools.keys()
        assert entry.inputs[0].shape == ["batch", "seq"]
        report = entry.report
        assert report["nodes_after"] != report["nodes_before"] or report["changed_op_counts"]
    assert (engines / "tokenizer" / "tokenizer.json").is_file()
    assert not list(engines.glob("*.tmp")), "no half-written files"


def test_rebuild_skips_unchanged_and_redoes_changed(glm4v_tiny_model, tmp_path):
    model = shutil.copytree(glm4v_tiny_model, tmp_path / "model")
    args = [
        "build",
        "--model",
        model,
        "--out",
        tmp_path / "engines",
        "--work-dir",
        tmp_path / "build",
        "--precision",
        "fp32",
        "--backend",
        "onnxruntime",
    ]
    run_cli(*args)
    first = json.loads((tmp_path / "engines" / "manifest.json").read_text())
    again = run_cli(*args)
    assert "fp32 ONNX up to date" in again.stderr and "fp32 engine up to date" in again.stderr
    assert json.loads((tmp_path / "engines" / "manifest.json").read_text()) == first

    generation = model / "generation_config.json"
    generation.write_text(generation.read_text().replace("{", '{\n  "max_length": 77,', 1))
    changed = run_cli(*args)
    assert "export text_decoder" in changed.stderr
    second = json.loads((tmp_path / "engines" / "manifest.json").read_text())
    assert second["model"]["source_hash"] != first["model"]["source_hash"]
