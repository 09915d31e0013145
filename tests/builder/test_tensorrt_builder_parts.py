"""The TensorRT backend's parts that run without TensorRT: profiles, calibration cache, precision
plan and builder-config steps (on recording fakes), layer report summary, KV pool compaction
(checked with ONNX Runtime)."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

from builder.build import tensorrt_compat as compat
from builder.build.tensorrt_calibration import (
    CalibrationCacheError,
    find_calibration_cache,
    parse_calibration_cache,
)
from builder.build.tensorrt_engine import load_timing_cache
from builder.build.tensorrt_layers import fusion_summary
from builder.build.tensorrt_profiles import ProfileError, graph_inputs, pool_blocks_max, profiles_for
from builder.errors import BuildError
from runtime import decoder_io as io
from runtime.engines.tensorrt_pool import block_bucket, pad_block_tables
from runtime.manifest import Manifest

AXES = {"batch": [1, 8], "seq": [1, 2048], "blocks": [1, 128], "logit_positions": [1, 2048]}


def test_decoder_profiles_from_the_exported_graph(glm4v_tiny_engines):
    manifest = Manifest.load(glm4v_tiny_engines)
    work = glm4v_tiny_engines.parent.parent / "build" / glm4v_tiny_engines.name
    inputs = graph_inputs(work / "text_decoder.fp16.onnx")
    prefill, decode = profiles_for(inputs, manifest.axes, decoder=True)
    max_batch, max_seq = manifest.axes["batch"][1], manifest.axes["seq"][1]
    assert prefill.shapes[io.INPUT_IDS].min == (1, 1)
    assert prefill.shapes[io.INPUT_IDS].opt == (1, min(512, max_seq))
    assert prefill.shapes[io.INPUT_IDS].max == (max_batch, max_seq)
    assert decode.shapes[io.INPUT_IDS].min == (1, 1) and decode.shapes[io.INPUT_IDS].max == (max_batch, 1)
    assert decode.shapes[io.INPUT_IDS].opt == (8, 1)
    assert decode.shapes[io.POSITION_IDS].max == (3, max_batch, 1)  # GLM-4V's [3, B, S] rope positions
    pool = decode.shapes["key_cache.0"]
    assert pool.min[0] == 1 and pool.max[0] == pool_blocks_max(manifest.axes) == pool.opt[0]
    assert pool.max[1:] == pool.min[1:]  # block size, KV heads, head dim are static


def test_an_axis_without_a_range_is_a_clear_error():
    with pytest.raises(ProfileError, match="'frames'"):
        profiles_for({"input_features": ["batch", 80, "frames"]}, AXES, decoder=False)


def test_encoder_profile_optimises_for_a_full_batch():
    (profile,) = profiles_for({"pixel_values": ["batch", 3, 224, 224]}, AXES, decoder=False)
    assert profile.shapes["pixel_values"].opt == (8, 3, 224, 224)


def _cache_line(name: str, scale: float) -> str:
    return f"{name}: {struct.pack('>f', scale).hex()}"


def test_calibration_cache_round_trip(tmp_path):
    scales = {"input_ids": 0.5, "/layers.0/attn/q_proj/MatMul_output_0": 0.0123}
    path = tmp_path / "text_decoder.int8.calibration.cache"
    path.write_text(
        "TRT-100300-EntropyCalibration2\n" + "\n".join(_cache_line(n, s) for n, s in scales.items()) + "\n"
    )
    cache = parse_calibration_cache(path)
    assert cache.version == 100300
    assert cache.scales == pytest.approx(scales)
    assert cache.raw == path.read_bytes()
    (tmp_path / "text_decoder.fp16.onnx").write_bytes(b"not a cache")
    assert find_calibration_cache("text_decoder", tmp_path) == path
    assert find_calibration_cache("vision_encoder", tmp_path) is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("TRT-100300-MinMaxCalibration\n", "EntropyCalibration2"),
        ("TRT-100300-EntropyCalibration2\nx: 12\n", ":2:"),
    ],
)
def test_malformed_calibration_cache_is_refused(tmp_path, text, match):
    path = tmp_path / "bad.cache"
    path.write_text(text)
    with pytest.raises(CalibrationCacheError, match=match):
        parse_calibration_cache(path)


def test_fusion_summary_counts_layers_built_from_several_onnx_nodes():
    report = {
        "Layers": [
            {"Name": "/q_proj/MatMul", "LayerType": "Gemm", "Metadata": "[ONNX Layer: /q_proj/MatMul]"},
            {
                "Name": "/norm/Pow + /norm/ReduceMean + /norm/Add",
                "LayerType": "PointWiseV2",
                "Metadata": "[ONNX Layer: /norm/Pow]\x1f[ONNX Layer: /norm/ReduceMean]\x1f[ONNX Layer: /norm/Add]",
            },
        ],
        "Bindings": ["input_ids", "logits"],
    }
    summary = fusion_summary(report)
    assert summary["layers"] == 2 and summary["onnx_nodes"] == 4 and summary["fused_layers"] == 1
    assert "/norm/ReduceMean" in summary["examples"][0]
    assert fusion_summary({"Layers": ["a + b", "c"]})["fused_layers"] == 1  # LAYER_NAMES_ONLY form


def test_fusion_summary_counts_each_onnx_node_once():
    """A node listed twice in one layer, or under onnx-tensorrt's " | …" local-function suffix, is
    one source (TensorRT 11 reports "I/O Tensors" where 10 had "Bindings"; neither is read)."""
    metadata = "\x1f".join(
        f"[ONNX Layer: {name}]"
        for name in ("/mlp/Mul", "/mlp/Mul", "/mlp/Sigmoid | gelu_fn", "/mlp/Sigmoid | gelu_fn")
    )
    report = {
        "Layers": [{"Name": "fused", "LayerType": "PointWiseV2", "Metadata": metadata}, "x + x | f"],
        "I/O Tensors": [{"Name": "input_ids", "IOMode": "Input"}],
    }
    summary = fusion_summary(report)
    assert summary["onnx_nodes"] == 3 and summary["fused_layers"] == 1
    assert summary["examples"] == ["PointWiseV2: /mlp/Mul + /mlp/Sigmoid"]


def test_tensorrt_11_refuses_an_int8_graph_without_qdq():
    trt11 = SimpleNamespace(__version__="11.0.0")
    with pytest.raises(BuildError, match="Q/DQ"):
        compat.plan_precision(trt11, "int8", graph_has_qdq=False, calibration_cache=None)
    assert compat.plan_precision(trt11, "int8", graph_has_qdq=True, calibration_cache=None).strongly_typed


class _FakeConfig:
    """The IBuilderConfig calls the build step makes, recorded (TensorRT is absent here)."""

    def __init__(self, accept_cache: bool = True) -> None:
        self.accept_cache, self.calls = accept_cache, []

    def create_timing_cache(self, data: bytes):
        return SimpleNamespace(data=data)

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        self.calls.append(("set_timing_cache", cache.data))
        return self.accept_cache or cache.data == b""

    def set_flag(self, flag) -> None:
        self.calls.append(("set_flag", flag))

    def set_calibration_profile(self, profile) -> bool:
        self.calls.append(("set_calibration_profile", profile))
        return True


def test_a_refused_timing_cache_is_replaced_by_a_fresh_one(tmp_path):
    path = tmp_path / "tensorrt.timing.cache"
    path.write_bytes(b"from another GPU")
    config = _FakeConfig(accept_cache=False)
    cache, reused = load_timing_cache(config, path)
    assert reused == 0 and cache.data == b""
    assert config.calls == [("set_timing_cache", b"from another GPU"), ("set_timing_cache", b"")]
    assert load_timing_cache(_FakeConfig(), path)[1] == len(b"from another GPU")


def test_implicit_int8_sets_the_calibration_profile(tmp_path):
    path = tmp_path / "text_decoder.int8.calibration.cache"
    path.write_text("TRT-100300-EntropyCalibration2\n" + _cache_line("input_ids", 0.5) + "\n")

    class Calibrator:  # stands in for trt.IInt8EntropyCalibrator2
        def __init__(self) -> None:
            pass

    trt10 = SimpleNamespace(
        __version__="10.3.0",
        BuilderFlag=SimpleNamespace(FP16="FP16", INT8="INT8"),
        IInt8EntropyCalibrator2=Calibrator,
    )
    plan = compat.plan_precision(trt10, "int8", graph_has_qdq=False, calibration_cache=path)
    config = _FakeConfig()
    compat.apply_precision(trt10, config, plan, calibration_profile="profile 0")
    assert config.calls[-1] == ("set_calibration_profile", "profile 0")
    assert config.int8_calibrator.read_calibration_cache() == path.read_bytes()


def test_block_bucket():
    assert [block_bucket(n) for n in (1, 2, 3, 4, 5, 64, 65)] == [1, 2, 4, 4, 8, 64, 128]


@pytest.mark.parametrize("decode", [False, True])
def test_padded_block_tables_give_the_same_outputs(glm4v_tiny_engines, decode):
    """TensorRT decode calls pad block tables to a bucket (with the null block) so CUDA graphs
    repeat; ONNX Runtime on the same portable graph shows the padding changes nothing."""
    manifest = Manifest.load(glm4v_tiny_engines)
    d = manifest.decoder
    # The portable graph TensorRT builds from (the ORT engine reads its past from per-sequence slots).
    graph = glm4v_tiny_engines.parent.parent / "build" / "glm4v-tiny" / "text_decoder.fp32.onnx"
    session = ort.InferenceSession(str(graph))
    rng = np.random.default_rng(0)
    batch, seq, blocks, pool_blocks, bs = 3, 1 if decode else 5, 3, 40, d["block_size"]
    past = np.array([bs * 3 - 2, bs + 4, 7])
    tables = np.zeros((batch, blocks), np.int64)
    for row, n in enumerate(-(-past // bs)):
        tables[row, :n] = rng.choice(np.arange(1, pool_blocks), n, replace=False)
    feeds = {
        io.INPUT_IDS: rng.integers(0, d["vocab_size"], (batch, seq)),
        io.POSITION_IDS: np.broadcast_to(past[:, None] + np.arange(seq), (3, batch, seq)).copy(),
        io.PAST_LENS: past,
        io.BLOCK_TABLES: tables,
        io.LOGIT_INDEX: np.full((batch, 1), seq - 1),
    }
    names = [i.name for i in session.get_inputs()]
    kv = [n for n in names if n.split(".")[0] in ("key_cache", "value_cache")]
    shape = (pool_blocks, bs, d["num_kv_heads"], d["head_dim"])
    feeds |= {n: rng.standard_normal(shape).astype(np.float32) for n in kv}
    feeds |= {n: np.zeros((1, d["hidden_size"]), np.float32) for n in names if n == "media_embeds"}
    feeds |= {n: np.full((batch, seq), -1, np.int64) for n in names if n == "media_rows"}
    feeds = {k: (v.astype(np.int64) if v.dtype.kind == "i" else v) for k, v in feeds.items()}
    padded = {**feeds, io.BLOCK_TABLES: pad_block_tables(tables, limit=8)}
    assert padded[io.BLOCK_TABLES].shape[1] == 4
    exact = session.run(None, feeds)
    bucketed = session.run(None, padded)
    for a, b in zip(exact, bucketed, strict=True):
        np.testing.assert_array_equal(a, b)
