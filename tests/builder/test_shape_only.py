"""`build --check-only` on a shape-only model directory: the real graphs without weights, in little RAM."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import onnx
import pytest

from builder.model_dir import open_model_dir
from builder.presets import MARKER, create_preset
from runtime.shape_only import NO_WEIGHTS, is_shape_only
from tests.conftest import run_cli

PRECISIONS = ("fp32", "fp16", "int4")
GRAPHS = [f"{c}.{p}.onnx" for c in ("text_decoder", "vision_encoder") for p in PRECISIONS]
RAM_BUDGET_GIB = 4.0


def _check_only(model: Path, work: Path, *extra: str):
    precisions = [arg for p in PRECISIONS for arg in ("--precision", p)]
    return run_cli("build", "--model", model, "--out", work / "never-written", "--work-dir", work,
                   "--backend", "tensorrt", "--check-only", *precisions, *extra)  # fmt: skip


def _peak_rss_gib(stderr: str) -> float:
    """The build stage's own peak RSS (VmHWM over every inner stage), from its closing line."""
    return float(re.search(r"✓ build .*peak RSS ([\d.]+) GiB", stderr)[1])


def _shape_only_copy(model: Path, out: Path) -> Path:
    """`model`'s config, tokenizer and processor files, marked as a directory without weights."""
    out.mkdir()
    for file in open_model_dir(model).side_files():
        shutil.copy2(file, out / file.name)
    marker = json.loads((model / MARKER).read_text()) | {"weights": "none"}
    (out / MARKER).write_text(json.dumps(marker))
    return out


def _structure(graph: Path) -> dict:
    model = onnx.load(str(graph), load_external_data=False)
    g = model.graph
    return {
        "nodes": [node.SerializeToString() for node in g.node],
        "io": [value.SerializeToString() for value in [*g.input, *g.output]],
        "value_info": sorted(value.SerializeToString() for value in g.value_info),
        "weights": sorted((t.name, t.data_type, tuple(t.dims)) for t in g.initializer),
        "opsets": sorted((o.domain, o.version) for o in model.opset_import),
    }


@pytest.mark.slow
def test_shape_only_graphs_are_the_real_builds_graphs(glm4v_tiny_model: Path, tmp_path: Path) -> None:
    """Same nodes (names, inputs, attributes), I/O, type annotations and weight names, types and
    shapes as the check-only build of the same config with its weights, at every precision."""
    _check_only(glm4v_tiny_model, tmp_path / "real", "--int4-method", "rtn")
    shape_dir = _shape_only_copy(glm4v_tiny_model, tmp_path / "shape-only")
    result = _check_only(shape_dir, tmp_path / "shape")
    assert "int8" not in result.stderr  # not asked for, so not mentioned
    for name in GRAPHS:
        assert _structure(tmp_path / "shape" / name) == _structure(tmp_path / "real" / name), name
    weights = onnx.load(str(tmp_path / "shape" / "text_decoder.fp32.onnx"), load_external_data=False)
    assert all(is_shape_only(t) for t in weights.graph.initializer if t.name.endswith("proj.weight"))
    assert (tmp_path / "shape" / NO_WEIGHTS).stat().st_size == 0


def test_real_widths_two_layers_within_ram_budget(tmp_path: Path) -> None:
    """AutoGLM-Phone-9B's widths and vocabulary with 2 decoder layers and 2 vision blocks: the
    figures follow from the config, and RAM stays far below the weights' size (6 GiB fp32 here)."""
    model = create_preset("autoglm-phone-9b-shape", tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = config["vision_config"]["depth"] = 2
    (model / "config.json").write_text(json.dumps(config))
    result = _check_only(model, tmp_path / "work", "--precision", "int8")
    assert "int8 skipped" in result.stderr
    assert _peak_rss_gib(result.stderr) < RAM_BUDGET_GIB
    report = json.loads((tmp_path / "work" / "shape_check.json").read_text())
    graphs = {f"{g['component']}.{g['precision']}": g for g in report["graphs"]}
    assert report["skipped"].keys() == {"int8"} and len(graphs) == 6
    assert all(g["tensorrt_passed"] and not g["tensorrt_errors"] for g in graphs.values())

    h, inter, vocab, kv = 4096, 13696, 151552, 2 * 128
    layer = 2 * h * h + 2 * h * kv + 3 * h * inter  # q, o, k, v, gate_up, down
    text_params = 2 * vocab * h + 2 * layer  # embedding, lm_head (untied), layers
    fp32, fp16, int4 = (graphs[f"text_decoder.{p}"] for p in PRECISIONS)
    mib = 2**20
    assert abs(fp32["weight_bytes"] - 4 * text_params) < mib  # + norms, biases, rotary constants
    assert abs(fp16["weight_bytes"] - 2 * text_params) < mib
    quantised = vocab * h + 2 * layer  # lm_head and the layers' MatMuls
    int4_bytes = quantised // 2 + 4 * quantised // 32  # + an fp32 scale per block of 32
    int4_bytes += vocab * h + 4 * vocab  # the untied embedding: int8 rows, a scale per row
    assert abs(int4["weight_bytes"] - int4_bytes) < mib
    assert int4["dequantize_nodes"] == 2 * 6 + 2  # q, k, v, o, gate_up, down per layer; table; lm_head
    inputs = {spec["name"]: spec for spec in fp16["inputs"]}
    assert inputs["key_cache.1"]["shape"] == ["pool_blocks", 16, 2, 128]
    assert inputs["key_cache.1"]["dtype"] == "float16"
    assert fp32["outputs"][0] == {
        "name": "logits",
        "dtype": "float32",
        "shape": ["batch", "logit_positions", vocab],
    }
    vision = graphs["vision_encoder.fp32"]
    assert vision["inputs"][0]["shape"] == ["batch", 3, 896, 896]
    assert vision["outputs"][0]["shape"] == ["batch", 1024, 4096]
    assert all(g["nodes"] > 100 for g in graphs.values())


def test_pipeline_stage_memory_at_real_widths(tmp_path: Path) -> None:
    """AutoGLM-Phone-9B's widths with 2 decoder layers in 2 pipeline stages: each stage graph
    passes the TensorRT check, and the memory table adds its weights, its KV pool and (on the first
    device) the vision encoder as the config says it should."""
    model = create_preset("autoglm-phone-9b-shape", tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = config["vision_config"]["depth"] = 2
    (model / "config.json").write_text(json.dumps(config))
    result = _check_only(model, tmp_path / "work", "--precision", "int8", "--pipeline-stages", "2")
    assert "Device memory per pipeline stage" in result.stderr  # the console prints to stderr
    report = json.loads((tmp_path / "work" / "shape_check.json").read_text())
    graphs = {f"{g['component']}.{g['precision']}": g for g in report["graphs"]}
    assert all(g["tensorrt_passed"] for g in graphs.values()) and "text_decoder.fp32" not in graphs
    first, last = graphs["text_decoder_stage0.fp16"], graphs["text_decoder_stage1.fp16"]
    assert first["outputs"][0] == {"name": "hidden_out", "dtype": "float16", "shape": ["batch", "seq", 4096]}
    assert last["inputs"][0] == {"name": "hidden_in", "dtype": "float16", "shape": ["batch", "seq", 4096]}

    h, inter, vocab, kv = 4096, 13696, 151552, 2 * 128
    layer = 2 * h * h + 2 * h * kv + 3 * h * inter
    rows = {(r["precision"], r["stage"]): r for r in report["stage_memory"]}
    assert rows.keys() == {(p, s) for p in ("fp32", "fp16", "int8", "int4") for s in (0, 1)}
    mib = 2**20
    for stage in (0, 1):  # the embedding table on the first, lm_head on the last, a layer each
        fp16 = rows[("fp16", stage)]
        assert abs(fp16["weights_bytes"] - 2 * (vocab * h + layer)) < mib
        assert fp16["kv_pool_bytes"] == 2 * 1 * 2 * 128 * 2 * 8 * 2048  # K and V, 1 layer, fp16
        assert rows[("fp32", stage)]["kv_pool_bytes"] == 2 * fp16["kv_pool_bytes"]
        assert rows[("int8", stage)]["weights_bytes"] == fp16["weights_bytes"] // 2
        assert rows[("int8", stage)]["weights_estimated"] and not fp16["weights_estimated"]
    assert rows[("fp16", 0)]["encoder_bytes"] == graphs["vision_encoder.fp16"]["weight_bytes"]
    assert rows[("fp16", 1)]["encoder_bytes"] == 0


@pytest.mark.slow
@pytest.mark.large  # ~9 minutes on 2 cores: `make test-large`, not `make test`
def test_autoglm_phone_9b_at_full_size_within_ram_budget(tmp_path: Path) -> None:
    """The real configuration (~41 GB of fp32 weights): every graph exported, rewritten and
    checked in under 4 GiB of RAM (~0.85 GiB measured)."""
    model = create_preset("autoglm-phone-9b-shape", tmp_path / "model")
    result = _check_only(model, tmp_path / "work")
    assert _peak_rss_gib(result.stderr) < RAM_BUDGET_GIB
    report = json.loads((tmp_path / "work" / "shape_check.json").read_text())
    figures = {
        f"{g['component']}.{g['precision']}": (g["nodes"], g["dequantize_nodes"]) for g in report["graphs"]
    }
    assert figures == {
        "text_decoder.fp32": (4085, 0),
        "text_decoder.fp16": (5300, 0),
        "text_decoder.int4": (4327, 40 * 6 + 2),
        "vision_encoder.fp32": (1330, 0),
        "vision_encoder.fp16": (1732, 0),
        "vision_encoder.int4": (1454, 124),
    }
    gib = {
        f"{g['component']}.{g['precision']}": round(g["weight_bytes"] / 2**30, 2) for g in report["graphs"]
    }
    assert gib == {
        "text_decoder.fp32": 35.02,
        "text_decoder.fp16": 17.51,
        "text_decoder.int4": 5.69,
        "vision_encoder.fp32": 3.35,
        "vision_encoder.fp16": 1.67,
        "vision_encoder.int4": 0.63,
    }
