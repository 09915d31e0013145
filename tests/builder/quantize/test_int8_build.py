"""`build --precision int8` and `calibrate` end to end on glm4v-tiny, through the real CLI.

The tiny model has random weights, so its accuracy figures are only sanity bounds; the SmolLM2
figures are in the README (autoglm-trt bench engines --accuracy-only).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter

import onnx
import pytest

from calibration.qdq import activation_scales
from calibration.trt_cache import read_cache
from runtime.manifest import Manifest
from tests.conftest import run_cli
from tests.test_cli import assert_user_error


def test_int8_engine_manifest_cache_and_graph_agree(glm4v_tiny_int8_engines):
    engines = glm4v_tiny_int8_engines
    manifest = Manifest.load(engines)
    assert manifest.precisions("text_decoder") == ["fp16", "fp32", "int8"]
    entry = manifest.entry("text_decoder", "int8")
    summary = entry.calibration
    assert summary["samples"] == 64 and summary["method"].startswith("entropy")
    assert len(summary["data_sha256"]) == 64
    # The default policy: q/k/v are smoothed and run in int8; lm_head and each layer's MLP down
    # projection stay float.
    layers = manifest.decoder["num_layers"]
    reasons = sorted(summary["excluded_nodes"].values())
    assert reasons.count("output projection (lm_head) kept in higher precision") == 1
    assert reasons.count("MLP down projection (activation outliers) kept in higher precision") == layers
    assert len(reasons) == 1 + layers
    assert summary["smoothing"]["alpha"] == 0.8
    assert len(summary["smoothing"]["smoothed_nodes"]) == 3 * layers
    version, algorithm, scales = read_cache(engines / summary["cache_file"])
    assert algorithm == "EntropyCalibration2" and version > 100000
    assert len(scales) > 0
    # The Q/DQ graph TensorRT would consume carries exactly the cache's scales, as symmetric int8.
    work = engines.parent.parent / "build" / "glm4v-tiny"
    graph = onnx.load(str(work / "text_decoder.int8.onnx"))
    assert activation_scales(graph) == scales  # the same float32 bits
    # The ONNX Runtime engine runs every quantised projection, W8A8 and weight-only alike, as an
    # 8-bit MatMulNBits, which quantises its activations itself: no Q/DQ node is left.
    ops = Counter(node.op_type for node in onnx.load(str(engines / entry.file)).graph.node)
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == 0 and ops["MatMulNBits"] > 0
    projections = summary["quantized_nodes"] + summary["weight_only_nodes"]
    lookups = len(summary["embedding_tables"])  # GLM's untied table: a GatherBlockQuantized
    assert lookups == 1
    assert entry.report["fusions"]["MatMulNBits / GatherBlockQuantized"] == projections + lookups
    assert all(check["passed"] for check in entry.report["validation"]["checks"])


def test_accuracy_report_and_int8_generation(glm4v_tiny_int8_engines, tmp_path):
    report = tmp_path / "accuracy.json"
    run_cli("bench", "engines", "--engines", glm4v_tiny_int8_engines, "--accuracy-only", "--json", report,
            "--passages", "3", "--max-tokens", "96")  # fmt: skip
    rows = {row["precision"]: row for row in json.loads(report.read_text())["accuracy"]}
    assert rows.keys() == {"fp16", "int8"}
    for row in rows.values():
        assert row["component"] == "text_decoder" and row["perplexity_fp32"] > 1
        assert row["cosine"] > 0.98 and 0.5 < row["top1"] <= 1  # random weights: near-flat logits
    assert rows["fp16"]["cosine"] > rows["int8"]["cosine"]
    out = run_cli("generate", "--engines", glm4v_tiny_int8_engines, "--prompt", "Hello", "--max-tokens", "4",
                  "--json")  # fmt: skip
    assert json.loads(out.stdout)["precision"] == "int8"  # auto prefers int8


def test_rebuild_reuses_calibration_and_recalibrates_on_new_data(glm4v_tiny_int8_engines, tmp_path):
    work = glm4v_tiny_int8_engines.parent.parent / "build" / "glm4v-tiny"
    model = glm4v_tiny_int8_engines.parent.parent / "models" / "glm4v-tiny"
    again = run_cli("calibrate", "--model", model, "--out", work)
    assert "calibration up to date" in again.stderr and "int8 ONNX up to date" in again.stderr
    # Own work dir with the fp32 export copied in: new data → calibrated again, excludes → new Q/DQ.
    mine = tmp_path / "work"
    mine.mkdir()
    for name in ("text_decoder.fp32.onnx", "text_decoder.fp32.export.json"):
        shutil.copy(work / name, mine / name)
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text(
        "\n\n".join(f"Paragraph {i} about phones and apps. " * 9 for i in range(8))
    )
    text_only = ("--component", "text_decoder", "--data", data, "--samples", "2")
    first = run_cli("calibrate", "--model", model, "--out", mine, *text_only)
    assert "▶ calibrate text_decoder" in first.stderr and "fp32 ONNX up to date" in first.stderr
    excluded = run_cli(
        "calibrate", "--model", model, "--out", mine, *text_only, "--exclude", "node_linear_1*"
    )
    assert "calibration up to date" in excluded.stderr and "▶ write text_decoder int8" in excluded.stderr
    record = json.loads((mine / "text_decoder.int8.json").read_text())
    assert any(why == "--exclude node_linear_1*" for why in record["summary"]["excluded_nodes"].values())
    assert not list(mine.glob(".*")), "no temporaries left behind"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--data", "{empty}"], ["has no text files", "--data"]),
        (["--data", "{missing}"], ["does not exist"]),
        (["--samples", "100000"], ["--samples 100000", "lower --samples"]),
    ],
)
def test_bad_calibration_input_is_one_clear_error_and_writes_nothing(
    glm4v_tiny_model, tmp_path, args, fragments
):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", missing=tmp_path / "missing") for a in args]
    out = tmp_path / "out"
    result = run_cli("calibrate", "--model", glm4v_tiny_model, "--out", out, *args, check=False)
    assert_user_error(result, *fragments)
    assert not out.exists()  # data problems are found before anything is written


def test_build_int8_checks_calibration_data_before_exporting(glm4v_tiny_model, tmp_path):
    result = run_cli("build", "--model", glm4v_tiny_model, "--out", tmp_path / "e", "--work-dir", tmp_path / "w",
                     "--precision", "int8", "--calib-data", tmp_path / "none", "--backend", "onnxruntime",
                     check=False)  # fmt: skip
    assert_user_error(result, "does not exist")
    assert not (tmp_path / "w" / "text_decoder.fp32.onnx").exists()


PEAK_RSS = """
import resource, sys
from builder.cli import main
sys.argv = ["autoglm-trt", "calibrate", *sys.argv[1:]]
try:
    main()
finally:
    print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def test_calibration_memory_does_not_grow_with_samples(glm4v_tiny_int8_engines, tmp_path):
    work = glm4v_tiny_int8_engines.parent.parent / "build" / "glm4v-tiny"
    model = glm4v_tiny_int8_engines.parent.parent / "models" / "glm4v-tiny"
    peaks = {}
    for samples in (16, 256):
        out = tmp_path / str(samples)
        out.mkdir()
        for name in ("text_decoder.fp32.onnx", "text_decoder.fp32.export.json"):
            shutil.copy(work / name, out / name)
        result = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, "--model", str(model), "--out", str(out), "--samples", str(samples),
             "--component", "text_decoder"],
            capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        peaks[samples] = int(result.stderr.rsplit("peak_rss_kib", 1)[1]) / 1024
    assert peaks[256] < peaks[16] + 32, f"peak RSS MiB: {peaks}"
