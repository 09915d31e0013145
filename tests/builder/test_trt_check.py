"""The CPU compatibility check for TensorRT's ONNX parser: our graphs pass, violations fail."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from builder.trt_check import check_graph, check_model
from tests.conftest import run_cli

F, I8, U8 = TensorProto.FLOAT, TensorProto.INT8, TensorProto.UINT8


def _model(nodes, inputs, outputs, initializers=(), opset=20, extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def _io(name, dtype=F, shape=(2, 4)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _rules(model) -> set[tuple[str, str]]:
    return {(f.severity, f.rule) for f in check_model(model, "test").findings}


def _qdq_matmul(zp_type=I8, zp_value=0, act_scale=(0.1,), weight_axis=1, quantize_weight=True):
    """x -> Q -> DQ -> MatMul(·, DQ(int8 weight, per-channel)) -> y."""
    weight = numpy_helper.from_array(np.ones((4, 3), np.int8), "w_q")
    w_scale = numpy_helper.from_array(np.full(3, 0.02, np.float32), "w_scale")
    w_zp = numpy_helper.from_array(np.zeros(3, np.int8), "w_zp")
    a_scale = numpy_helper.from_array(
        np.array(act_scale, np.float32).reshape(-1 if len(act_scale) > 1 else ()), "a_scale"
    )
    zp_np = np.array(zp_value, dtype=np.int8 if zp_type == I8 else np.uint8)
    a_zp = numpy_helper.from_array(zp_np, "a_zp")
    w_float = numpy_helper.from_array(np.ones((4, 3), np.float32), "w_f")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zp"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "a_scale", "a_zp"], ["x_dq"], name="dq_x"),
    ]
    if quantize_weight:
        nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dq_w",
                                      axis=weight_axis))  # fmt: skip
        nodes.append(helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"], name="mm"))
    else:
        nodes.append(helper.make_node("MatMul", ["x_dq", "w_f"], ["y"], name="mm"))
    inits = [weight, w_scale, w_zp, a_scale, a_zp, w_float]
    return _model(nodes, [_io("x")], [_io("y", shape=(2, 3))], inits)


def test_a_well_formed_int8_qdq_graph_passes():
    report = check_model(_qdq_matmul(), "good")
    assert report.passed, [f.line() for f in report.findings]


@pytest.mark.parametrize(
    ("case", "model"),
    [
        ("uint8 zero point (asymmetric activations)", _qdq_matmul(zp_type=U8, zp_value=128)),
        ("non-zero int8 zero point", _qdq_matmul(zp_value=3)),
        ("per-channel scale on an activation", _qdq_matmul(act_scale=(0.1, 0.2, 0.3, 0.4))),
        ("per-channel axis not the output channel", _qdq_matmul(weight_axis=0)),
        ("MatMul with one dequantized input", _qdq_matmul(quantize_weight=False)),
    ],
)
def test_bad_qdq_placement_fails(case, model):
    report = check_model(model, case)
    assert not report.passed
    assert any(f.rule == "qdq" for f in report.errors), [f.line() for f in report.findings]


def test_quantize_without_dequantize_fails():
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q")]
    model = _model(nodes, [_io("x")], [_io("y", I8)], [scale, zp])
    assert ("error", "qdq") in _rules(model)


def test_contrib_op_fails():
    nodes = [helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain="com.microsoft", name="fmm")]
    model = _model(nodes, [_io("a"), _io("b", shape=(4, 4))], [_io("y")],
                   extra_opsets=[helper.make_opsetid("com.microsoft", 1)])  # fmt: skip
    report = check_model(model, "contrib")
    assert {f.rule for f in report.errors} == {"domain"}
    assert any("com.microsoft" in f.message for f in report.errors)


def test_unsupported_op_fails():
    nodes = [helper.make_node("Unique", ["x"], ["y"], name="u")]
    model = _model(nodes, [_io("x", shape=(8,))], [_io("y", shape=(None,))])
    assert ("error", "unsupported-op") in _rules(model)


@pytest.mark.parametrize(
    ("op", "dtype"),
    [("MatMul", TensorProto.INT32), ("Clip", TensorProto.INT64), ("Add", TensorProto.UINT16)],
)
def test_unsupported_dtype_fails(op, dtype):
    inputs = ["a", "b"] if op != "Clip" else ["a"]
    nodes = [helper.make_node(op, inputs, ["y"], name="n")]
    shapes = {"a": (2, 4), "b": (4, 4) if op == "MatMul" else (2, 4)}
    model = _model(nodes, [_io(n, dtype, shapes[n]) for n in inputs], [_io("y", dtype, (2, 4))])
    assert ("error", "dtype") in _rules(model)


def test_non_constant_axes_fail():
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="rm")]
    model = _model(nodes, [_io("x"), _io("axes", TensorProto.INT64, (1,))], [_io("y", shape=(2, 1))])
    assert ("error", "attribute") in _rules(model)


def _graphs(work):
    graphs = sorted(work.glob("*.onnx"))
    assert graphs, f"no graphs in {work}"
    return graphs


def test_every_exported_graph_is_tensorrt_compatible(built, tmp_path):
    """`build --backend tensorrt --check-only` over the session build's graphs (export is up to
    date, so this is the check itself), then each graph it covered, by name."""
    model, engines = built
    work = engines.parent.parent / "build" / model.name
    result = run_cli("build", "--model", model, "--out", tmp_path / "never-written", "--work-dir", work,
                     "--backend", "tensorrt", "--check-only", "--precision", "fp32", "--precision", "fp16",
                     check=False)  # fmt: skip
    assert not (tmp_path / "never-written").exists()
    for graph in _graphs(work):
        if graph.name.endswith((".fp32.onnx", ".fp16.onnx")):  # not the int8 path's smoothed fp32
            assert graph.name in result.stderr
            report = check_graph(graph)
            assert report.passed, [f.line() for f in report.errors]
    assert result.returncode == 0, result.stderr[-3000:]


def test_int8_qdq_graphs_of_every_component_are_tensorrt_compatible(glm4v_tiny_int8_engines, tmp_path):
    """The int8 graphs (decoder, vision and audio encoders) as TensorRT would consume them: Q/DQ
    placement it can fuse, and biases left float (its DequantizeLinear takes no int32)."""
    base = glm4v_tiny_int8_engines.parent.parent
    work = base / "build" / "glm4v-tiny"
    result = run_cli("build", "--model", base / "models" / "glm4v-tiny", "--out", tmp_path / "never-written",
                     "--work-dir", work, "--backend", "tensorrt", "--check-only", "--precision", "int8",
                     check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for component in ("text_decoder", "vision_encoder", "audio_encoder"):
        graph = work / f"{component}.int8.onnx"
        assert graph.name in result.stderr
        report = check_graph(graph)
        assert report.passed, [f.line() for f in report.errors]
        assert any(node.op_type == "QuantizeLinear" for node in onnx.load(str(graph)).graph.node)


def test_onnxruntime_optimized_graph_is_not_tensorrt_compatible(glm4v_tiny_engines):
    """ORT's optimizer fuses into com.microsoft contrib ops: that is why TensorRT consumes the
    pre-optimizer graph."""
    report = check_graph(glm4v_tiny_engines / "text_decoder.fp32.onnx")
    assert not report.passed
    assert any(f.rule == "domain" and "com.microsoft" in f.op for f in report.errors)


def test_check_only_needs_the_tensorrt_backend(glm4v_tiny_model, tmp_path):
    result = run_cli("build", "--model", glm4v_tiny_model, "--out", tmp_path / "e", "--backend", "onnxruntime",
                     "--check-only", check=False)  # fmt: skip
    assert result.returncode == 2
    assert "--backend tensorrt" in result.stderr
    assert "Traceback" not in result.stderr
