"""The TensorRT check knows weight-only quantisation: per-channel int8 and block int4 DequantizeLinear
on a constant weight, directly or through a Transpose into MatMul, and into the embedding Gather."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from builder.trt_check import check_model
from calibration.weight_only import INT8, Scheme, int4_tensor, weight_only

F = TensorProto.FLOAT


def _tied_model(scheme: Scheme) -> onnx.ModelProto:
    """ids → Gather(T) → MatMul(W) → MatMul(Transpose(T)) → logits, then weight_only(scheme)."""
    rng = np.random.default_rng(0)
    t = rng.standard_normal((64, 128)).astype(np.float32)
    w = rng.standard_normal((128, 128)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["T", "ids"], ["e"], name="embed"),
            helper.make_node("MatMul", ["e", "W"], ["h"], name="proj"),
            helper.make_node("Transpose", ["T"], ["T_t"], name="tie", perm=[1, 0]),
            helper.make_node("MatMul", ["h", "T_t"], ["logits"], name="lm_head"),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("logits", F, [3, 64])],
        [numpy_helper.from_array(t, "T"), numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    weight_only(model, scheme)
    return model


@pytest.mark.parametrize("scheme", [INT8, Scheme(4, 32), Scheme(4, 128)], ids=["int8", "int4-32", "int4-128"])
def test_weight_only_graphs_pass(scheme):
    report = check_model(_tied_model(scheme), "woq")
    assert report.passed and not report.findings, [f.line() for f in report.findings]
    assert report.op_counts["DequantizeLinear"] == 2


def _block_model(axis: int, weight_type=TensorProto.INT4, k: int = 64) -> onnx.ModelProto:
    """x [2, K] → MatMul(DQ(W int4 [K, 16], block 32 along `axis`)) → y."""
    q = np.zeros((k, 16), np.int8)
    blocks = [-(-k // 32), 16] if axis == 0 else [k, 1]
    scale = numpy_helper.from_array(np.full(blocks, 0.1, np.float32), "w_scale")
    weight = int4_tensor("w_q", q) if weight_type == TensorProto.INT4 else numpy_helper.from_array(q, "w_q")
    graph = helper.make_graph(
        [
            helper.make_node(
                "DequantizeLinear", ["w_q", "w_scale"], ["w"], name="dq", axis=axis, block_size=32
            ),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        ],
        "g",
        [helper.make_tensor_value_info("x", F, [2, k])],
        [helper.make_tensor_value_info("y", F, [2, 16])],
        [weight, scale],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _errors(model) -> list[str]:
    return [f.message for f in check_model(model, "t").findings if f.severity == "error"]


def test_blocks_must_run_along_the_contracted_axis():
    assert _errors(_block_model(axis=0)) == []
    assert any("contracted" in m for m in _errors(_block_model(axis=1)))


def test_blocks_need_an_int4_weight():
    assert any("INT4" in m for m in _errors(_block_model(axis=0, weight_type=TensorProto.INT8)))


def test_a_short_last_block_is_a_warning():
    findings = check_model(_block_model(axis=0, k=80), "t").findings
    assert [f.severity for f in findings] == ["warning"] and "multiple of block_size" in findings[0].message


def test_a_dequantized_activation_without_a_quantized_weight_still_fails():
    """Only the weight may be dequantized alone (weight-only); a DQ activation × float weight is not."""
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s"], ["xq"], name="q"),
            helper.make_node("DequantizeLinear", ["xq", "s"], ["xd"], name="dq"),
            helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm"),
        ],
        "g",
        [helper.make_tensor_value_info("x", F, [2, 4])],
        [helper.make_tensor_value_info("y", F, [2, 3])],
        [
            numpy_helper.from_array(np.array(0.1, np.float32), "s"),
            numpy_helper.from_array(np.ones((4, 3), np.float32), "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert any("only some data inputs" in m for m in _errors(model))
