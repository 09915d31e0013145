"""The TensorRT build step's CPU-checkable parts: typing and builder flags per TensorRT version, the
calibration cache header, refused profiles and plans, atomic writes, the fp16-KV rewrite of int8 and
int4 decoders (checked with ONNX Runtime), and the order of builder calls.

TensorRT is absent here. Where a test needs it, a stand-in module records the calls the build step
makes (names and signatures as in TensorRT's 10.x/11.x Python bindings); it builds nothing, so
these tests check wiring only, never what TensorRT would make of the graph."""

from __future__ import annotations

import importlib.machinery
import json
import shutil
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from builder.build import tensorrt_compat as compat
from builder.build import tensorrt_engine as step
from builder.build import tensorrt_fp16_kv as fp16_kv_step
from builder.build.tensorrt_calibration import parse_calibration_cache
from builder.build.tensorrt_profiles import Profile, ProfileError, ShapeRange
from builder.config import TensorRTConfig
from builder.errors import BuildError
from builder.trt_check import check_graph
from runtime import decoder_io as io

AXES = {"batch": [1, 8], "seq": [1, 64], "blocks": [1, 4], "logit_positions": [1, 64]}


def _trt(version: str):
    return SimpleNamespace(
        __version__=version,
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1),
        BuilderFlag=SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32"),
        IInt8EntropyCalibrator2=type("Calibrator", (), {"__init__": lambda self: None}),
    )


class _Config:
    def __init__(self) -> None:
        self.calls = []

    def set_flag(self, flag) -> None:
        self.calls.append(("set", flag))

    def clear_flag(self, flag) -> None:
        self.calls.append(("clear", flag))

    def set_calibration_profile(self, profile) -> bool:
        return True


@pytest.mark.parametrize("version", ["10.0.1", "10.8.0", "11.4.0"])
@pytest.mark.parametrize(
    ("precision", "qdq"), [("fp32", False), ("fp16", False), ("int8", True), ("int4", True)]
)
def test_graph_precisions_build_strongly_typed(version, precision, qdq):
    """The fp16 graph's fp32 islands (RMSNorm x², rotary angles, Softmax) hold only if TensorRT
    keeps the graph's types: STRONGLY_TYPED on 10.x (11 is always strongly typed, flag deprecated)."""
    trt = _trt(version)
    plan = compat.plan_precision(trt, precision, graph_has_qdq=qdq, calibration_cache=None)
    assert plan.strongly_typed and plan.flags == ()  # strongly typed networks take no precision flags
    assert compat.network_flags(trt, plan) == (2 if version.startswith("10.") else 0)
    config = _Config()
    compat.apply_precision(trt, config, plan)
    assert config.calls == ([("clear", "TF32")] if precision == "fp32" else [])


def test_only_the_calibration_cache_path_is_weakly_typed(tmp_path):
    cache = tmp_path / "text_decoder.int8.calibration.cache"
    cache.write_text("TRT-100800-EntropyCalibration2\ninput_ids: 3c010204\n")
    trt = _trt("10.3.0")
    plan = compat.plan_precision(trt, "int8", graph_has_qdq=False, calibration_cache=cache)
    assert not plan.strongly_typed and plan.flags == ("FP16", "INT8")
    assert compat.network_flags(trt, plan) == 0
    config = _Config()
    compat.apply_precision(trt, config, plan, calibration_profile="profile 0")
    # The header names the TensorRT that builds, whatever the calibration step wrote.
    replayed = config.int8_calibrator.read_calibration_cache()
    assert replayed == b"TRT-100300-EntropyCalibration2\ninput_ids: 3c010204\n"
    assert parse_calibration_cache(cache).version == 100800  # the file itself is untouched


class _TrtProfile:
    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse

    def set_shape(self, name, low, best, high) -> None:
        if name == self.refuse:  # the binding raises where setDimensions returns false
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")


def _profiles():
    shape = ShapeRange((1, 1), (1, 4), (8, 64))
    return [Profile("prefill", {io.INPUT_IDS: shape}), Profile("decode", {io.INPUT_IDS: shape})]


def test_a_refused_optimization_profile_is_an_error():
    builder = SimpleNamespace(create_optimization_profile=_TrtProfile)
    config = SimpleNamespace(add_optimization_profile=lambda profile: 0)  # the second one: 0, not 1
    with pytest.raises(ProfileError, match=r"decode optimization profile.*returned 0.*expected 1"):
        step.add_profiles(builder, config, _profiles())
    config = SimpleNamespace(add_optimization_profile=lambda profile: -1)
    with pytest.raises(ProfileError, match=r"prefill optimization profile.*returned -1 \(-1: invalid\)"):
        step.add_profiles(builder, config, _profiles())
    builder = SimpleNamespace(create_optimization_profile=lambda: _TrtProfile(refuse=io.INPUT_IDS))
    with pytest.raises(ProfileError, match=r"prefill profile's range for input 'input_ids'.*max \(8, 64\)"):
        step.add_profiles(builder, config, _profiles())


def test_a_plan_that_does_not_deserialize_is_an_error():
    runtime = SimpleNamespace(deserialize_cuda_engine=lambda plan: None)
    trt = SimpleNamespace(Runtime=lambda logger: runtime)
    with pytest.raises(BuildError, match=r"built text_decoder\.fp16\.onnx but cannot deserialize"):
        step.layer_report(trt, b"plan", None, "text_decoder.fp16.onnx")


def _decoder(path: Path, external: bool = False) -> Path:
    """A decoder-shaped graph: pool inputs read through Gathers over block_tables, new_kv and logits
    out, one weight (in a side file when `external`)."""
    kv_shape = ["pool_blocks", 2, 1, 4]
    inputs = [
        helper.make_tensor_value_info(io.INPUT_IDS, TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info(io.BLOCK_TABLES, TensorProto.INT64, ["batch", "blocks"]),
        helper.make_tensor_value_info(io.LOGIT_INDEX, TensorProto.INT64, ["batch", "logit_positions"]),
        helper.make_tensor_value_info("key_cache.0", TensorProto.FLOAT, kv_shape),
        helper.make_tensor_value_info("value_cache.0", TensorProto.FLOAT, kv_shape),
    ]
    outputs = [
        helper.make_tensor_value_info(io.LOGITS, TensorProto.FLOAT, ["batch", "blocks", 2, 1, 4]),
        helper.make_tensor_value_info(io.NEW_KV, TensorProto.FLOAT, ["batch2", "blocks", 2, 1, 4]),
    ]
    weight = numpy_helper.from_array(np.linspace(0.5, 2, 4, dtype=np.float32), "w")
    nodes = [
        helper.make_node("Gather", ["key_cache.0", io.BLOCK_TABLES], ["k"], name="k_gather"),
        helper.make_node("Gather", ["value_cache.0", io.BLOCK_TABLES], ["v"], name="v_gather"),
        helper.make_node("Add", ["k", "v"], ["kv_sum"]),
        helper.make_node("Mul", ["kv_sum", "w"], [io.LOGITS]),
        helper.make_node("Concat", ["k", "v"], [io.NEW_KV], axis=0),
    ]
    graph = helper.make_graph(nodes, "decoder", inputs, outputs, [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=f"{path.name}.data", size_threshold=0)  # fmt: skip
    return path


def _feeds(names: list[str], pool: np.ndarray) -> dict[str, np.ndarray]:
    tables = np.array([[3, 1], [2, 0]], np.int64)
    feeds = {io.INPUT_IDS: np.zeros((2, 1), np.int64), io.BLOCK_TABLES: tables,
             io.LOGIT_INDEX: np.zeros((2, 1), np.int64), "key_cache.0": pool, "value_cache.0": np.ascontiguousarray(pool[::-1])}  # fmt: skip
    return {name: feeds[name] for name in names}


def _run(path: Path, kv_dtype) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path))
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((5, 2, 1, 4)).astype(np.float16).astype(kv_dtype)  # fp16-exact values
    return session.run(None, _feeds([i.name for i in session.get_inputs()], np.ascontiguousarray(pool)))


@pytest.mark.parametrize("external", [False, True])
def test_int8_and_int4_decoders_get_fp16_kv(tmp_path, external):
    graph = _decoder(tmp_path / "text_decoder.int4.onnx", external)
    rewritten = fp16_kv_step.fp16_kv_onnx_from_graph(graph)
    assert rewritten == tmp_path / "text_decoder.int4.fp16kv.onnx"
    model = onnx.load(str(rewritten))  # external data resolves beside the copy: referenced, not copied
    onnx.checker.check_model(model)
    types_ = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert types_["key_cache.0"] == types_["value_cache.0"] == types_[io.NEW_KV] == TensorProto.FLOAT16
    assert types_[io.LOGITS] == TensorProto.FLOAT
    readers = [n.op_type for n in model.graph.node if "key_cache.0" in n.input]
    assert readers == ["Gather"]  # the Cast widens the gathered blocks, not the whole pool
    if external:
        assert {p.name for p in tmp_path.iterdir()} == {graph.name, f"{graph.name}.data", rewritten.name}
    logits, new_kv = _run(graph, np.float32)
    logits16, new_kv16 = _run(rewritten, np.float16)
    np.testing.assert_array_equal(logits16, logits)  # exact: fp16 → fp32 casts lose nothing
    assert new_kv16.dtype == np.float16
    np.testing.assert_array_equal(new_kv16, new_kv.astype(np.float16))
    assert fp16_kv_step.fp16_kv_onnx_from_graph(rewritten) == rewritten  # already fp16: used as is


def test_fp16_kv_on_the_exported_decoder(glm4v_tiny_engines, tmp_path):
    """On the real export (the fp32 graph: int8 and int4 graphs share its fp32 KV I/O): every
    pool input is read by Gathers only, TensorRT's parser support check passes, and ONNX Runtime
    gives identical logits."""
    work = glm4v_tiny_engines.parent.parent / "build" / glm4v_tiny_engines.name
    graph = tmp_path / "text_decoder.int8.onnx"
    shutil.copyfile(work / "text_decoder.fp32.onnx", graph)
    rewritten = fp16_kv_step.fp16_kv_onnx_from_graph(graph)
    model = onnx.load(str(rewritten), load_external_data=False)
    kv = [v.name for v in model.graph.input if v.name.split(".")[0] in fp16_kv_step.KV_KINDS]
    assert {n.op_type for n in model.graph.node for name in n.input if name in kv} == {"Gather"}
    assert check_graph(rewritten).passed
    d = json.loads((glm4v_tiny_engines / "manifest.json").read_text())["decoder"]
    rng = np.random.default_rng(0)
    batch, bs = 2, d["block_size"]
    feeds = {
        io.INPUT_IDS: rng.integers(0, d["vocab_size"], (batch, 3)),
        io.POSITION_IDS: np.broadcast_to(np.array([5, 6, 7]), (3, batch, 3)).copy(),
        io.PAST_LENS: np.array([5, 2]),
        io.BLOCK_TABLES: np.array([[1], [2]]),
        io.LOGIT_INDEX: np.array([[2], [2]]),
        io.MEDIA_EMBEDS: np.zeros((1, d["hidden_size"]), np.float32),
        io.MEDIA_ROWS: np.full((batch, 3), -1),
    }
    pool = rng.standard_normal((4, bs, d["num_kv_heads"], d["head_dim"])).astype(np.float16)
    before, after = ort.InferenceSession(str(graph)), ort.InferenceSession(str(rewritten))
    names = [i.name for i in before.get_inputs()]
    wide = {n: feeds.get(n, pool.astype(np.float32)) for n in names}
    half = {n: feeds.get(n, pool) for n in names}
    (logits, new_kv), (logits16, new_kv16) = before.run(None, wide), after.run(None, half)
    np.testing.assert_array_equal(logits16, logits)
    np.testing.assert_array_equal(new_kv16, new_kv.astype(np.float16))


def _fake_tensorrt(version: str, calls: list) -> types.ModuleType:
    """Records the builder calls; returns a fixed plan and an empty layer report."""
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    trt.BuilderFlag = SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.ProfilingVerbosity = SimpleNamespace(DETAILED="DETAILED")
    trt.LayerInformationFormat = SimpleNamespace(JSON="JSON")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})

    class Config:
        def __getattr__(self, name):
            return lambda *args, **kwargs: calls.append((name, *args)) or True

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))
            return sum(call[0] == "add_optimization_profile" for call in calls) - 1

        def create_timing_cache(self, data):
            return SimpleNamespace(serialize=lambda: b"timing")

    class Builder:
        def __init__(self, logger) -> None:
            self.logger = logger

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return "network"

        def create_optimization_profile(self):
            return SimpleNamespace(set_shape=lambda *args: None)

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            return b"serialized plan"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger) -> None:
            pass

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            return True

    inspector = SimpleNamespace(get_engine_information=lambda fmt: json.dumps({"Layers": []}))
    engine = SimpleNamespace(create_engine_inspector=lambda: inspector)
    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    trt.Runtime = lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda plan: engine)
    return trt


@pytest.mark.parametrize("version", ["10.0.1", "11.4.0"])
def test_build_step_call_order(tmp_path, monkeypatch, version):
    """int4 decoder: parsed from the fp16-KV copy's path (parse_from_file, so external weights
    resolve), strongly typed, profiles added, plan written under the step's name with no temporary
    left, report naming the parsed graph."""
    calls = []
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(version, calls))
    graph = _decoder(tmp_path / "text_decoder.int4.onnx", external=True)
    engines = tmp_path / "engines"
    engines.mkdir()
    plan = engines / ".text_decoder.int4.plan.tmp"
    report = step.trt_engine_from_onnx(graph, plan, component="text_decoder", precision="int4", axes=AXES,
                                       config=TensorRTConfig(), engines_dir=engines)  # fmt: skip
    assert calls[0] == ("create_network", 2 if version.startswith("10.") else 0)
    assert calls[1] == ("parse_from_file", str(tmp_path / "text_decoder.int4.fp16kv.onnx"))
    assert [c[0] for c in calls].count("add_optimization_profile") == 2  # prefill, decode
    assert not any(c[0] in ("set_flag", "clear_flag") for c in calls)
    assert plan.read_bytes() == b"serialized plan"
    assert sorted(p.name for p in engines.iterdir()) == [
        plan.name, "tensorrt.timing.cache", "text_decoder.int4.plan.layers.json"
    ]  # fmt: skip
    assert report["onnx"] == "text_decoder.int4.fp16kv.onnx"
    assert report["precision_mode"] == "strongly typed int4: precision from the graph"
