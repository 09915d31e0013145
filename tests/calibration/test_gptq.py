"""GPTQ rounding (calibration/gptq.py) against round-to-nearest, on inputs whose channels are
correlated and unevenly scaled, as a decoder's are; errors are measured on held-out rows."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.gptq import block_scale, gptq_int4
from calibration.weight_only import Scheme, dequantise, int4_values, quantise_int4, weight_inputs, weight_only


def correlated_case(k: int = 96, n: int = 40, rows: int = 1024, seed: int = 0):
    rng = np.random.default_rng(seed)
    mix = np.eye(k) + 0.3 * rng.standard_normal((k, k))
    x = (rng.standard_normal((rows, k)) * np.exp(rng.standard_normal(k))) @ mix
    w = rng.standard_normal((k, n)) * 0.05
    return x.astype(np.float32), w.astype(np.float32)


def output_error(x: np.ndarray, w: np.ndarray, w_hat: np.ndarray) -> float:
    return float(np.square(x @ w_hat - x @ w).sum() / np.square(x @ w).sum())


@pytest.mark.parametrize("block", [32, 64])
def test_gptq_halves_the_output_error_of_round_to_nearest(block):
    x, w = correlated_case()
    sample, held_out = x[:256], x[256:]
    q, scale = gptq_int4(w, sample, block)
    rq, rscale = quantise_int4(w, block)
    assert q.shape == rq.shape and scale.shape == rscale.shape and q.dtype == np.int8
    assert q.min() >= -8 and q.max() <= 7
    gptq = output_error(held_out, w, dequantise(q, scale, 0, block))
    rtn = output_error(held_out, w, dequantise(rq, rscale, 0, block))
    assert gptq < 0.5 * rtn, (gptq, rtn)


def test_a_short_last_block_and_a_dead_channel():
    x, w = correlated_case(k=80)
    x[:, 5] = 0.0  # never active: its weights cannot matter, and H stays invertible
    q, scale = gptq_int4(w, x, 32)
    assert scale.shape == (3, w.shape[1]) and np.isfinite(scale).all() and (scale > 0).all()
    assert not q[5].any()
    rtn = dequantise(*quantise_int4(w, 32), 0, 32)
    assert output_error(x, w, dequantise(q, scale, 0, 32)) < output_error(x, w, rtn)


def test_block_scale_is_never_worse_than_max_over_seven():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 50)) * rng.uniform(0.1, 2, 50)
    importance = rng.uniform(0, 3, 32)
    chosen = block_scale(w, importance)
    plain = np.abs(w).max(axis=0) / 7

    def error(scale):
        return importance @ np.square(w - np.clip(np.rint(w / scale), -8, 7) * scale)

    assert np.all(error(chosen) <= error(plain) * (1 + 1e-6))  # the scale is stored as float32
    assert np.any(error(chosen) < 0.9 * error(plain))  # clipping the largest weight pays somewhere


def two_matmul_graph(w1: np.ndarray, w2t: np.ndarray) -> onnx.ModelProto:
    """x → MatMul(w1 [K, N]) → Gemm(transB, w2t [M, N])."""
    k = w1.shape[0]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
        helper.make_node("Gemm", ["h", "w2t"], ["y"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, w2t.shape[0]])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2t, "w2t")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_weight_only_rounds_each_weight_against_its_own_input():
    x, w1 = correlated_case(k=64, n=48)
    w2t = np.random.default_rng(2).standard_normal((32, 48)).astype(np.float32) * 0.05
    model = two_matmul_graph(w1, w2t)
    assert weight_inputs(model) == ["x", "h"]
    h = x @ w1
    weight_only(model, Scheme(4, 32), inputs={"x": x[:512], "h": h[:512]})
    inits = {i.name: i for i in model.graph.initializer}
    q1, s1 = int4_values(inits["w1_q"]), numpy_helper.to_array(inits["w1_scale"])
    q2, s2 = int4_values(inits["w2t_q"]), numpy_helper.to_array(inits["w2t_scale"])
    assert s2.shape == (32, 48 // 32 + 1)  # Gemm transB: blocks along its K, the weight's axis 1
    expected_q, expected_scale = gptq_int4(w1, x[:512], 32)
    np.testing.assert_array_equal(q1, expected_q)
    np.testing.assert_array_equal(s1, expected_scale)
    np.testing.assert_array_equal(q2.T, gptq_int4(w2t.T, h[:512], 32)[0])
    rtn = output_error(x[512:], w1, dequantise(*quantise_int4(w1, 32), 0, 32))
    assert output_error(x[512:], w1, dequantise(q1, s1, 0, 32)) < rtn


def test_an_int4_tied_table_is_rounded_against_the_lm_heads_input():
    """The lm_head reads the embedding's table transposed; GPTQ weighs its rounding by the lm_head's
    input, and the embedding's Gather reads the same rounded rows."""
    x, table_t = correlated_case(k=64, n=96)  # the lm_head's weight [H, V]: the table [V, H] transposed
    table = table_t.T.copy()
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["T", "ids"], ["e"], name="embed"),
            helper.make_node("Transpose", ["T"], ["T_t"], name="tie", perm=[1, 0]),
            helper.make_node("MatMul", ["h", "T_t"], ["logits"], name="lm_head"),
        ],
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [None, 64]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 96])],
        [numpy_helper.from_array(table, "T")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert weight_inputs(model) == ["h"]  # the lm_head's weight is a Transpose, not an initializer
    report = weight_only(model, Scheme(4, 32), inputs={"h": x[:512]})
    assert report.tied_embedding == "T"
    inits = {i.name: i for i in model.graph.initializer}
    q, scale = int4_values(inits["T_q"]), numpy_helper.to_array(inits["T_scale"])
    expected_q, expected_scale = gptq_int4(table_t, x[:512], 32)
    np.testing.assert_array_equal(q, expected_q.T)
    np.testing.assert_array_equal(scale, expected_scale.T)
    rounded = dequantise(q, scale, 1, 32).T
    rtn = dequantise(*quantise_int4(table_t, 32), 0, 32)
    assert output_error(x[512:], table_t, rounded) < 0.5 * output_error(x[512:], table_t, rtn)
