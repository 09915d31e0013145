"""Weight-only int8/int4 quantisation (calibration/weight_only.py): rounding bounds, int4 packing,
and the rewritten graphs run in ONNX Runtime exactly as the numpy dequantisation says."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.weight_only import (
    INT4_MAX,
    INT8,
    INT8_MAX,
    Scheme,
    dequantise,
    fake_quantise,
    int4_tensor,
    int4_values,
    quantise_int4,
    quantise_int8,
    weight_only,
)

RNG = np.random.default_rng(0)


def test_int8_per_channel_is_within_half_a_step():
    w = RNG.normal(size=(96, 40)).astype(np.float32) * np.linspace(0.01, 10, 40, dtype=np.float32)
    q, scale = quantise_int8(w, channel_axis=1)
    assert q.dtype == np.int8 and scale.shape == (40,)
    np.testing.assert_allclose(scale, np.abs(w).max(axis=0) / INT8_MAX, rtol=1e-6)
    error = np.abs(dequantise(q, scale, axis=1) - w)
    assert np.all(error <= scale / 2 * (1 + 1e-5))


@pytest.mark.parametrize("k", [64, 100])  # 100: the last block of 32 is short (4 rows)
def test_int4_blocks_along_k_are_within_half_a_step(k):
    w = RNG.normal(size=(k, 24)).astype(np.float32)
    w[3, 5] = 40.0  # an outlier costs only its own block
    q, scale = quantise_int4(w, 32, block_axis=0)
    blocks = -(-k // 32)
    assert scale.shape == (blocks, 24) and q.min() >= -INT4_MAX and q.max() <= INT4_MAX
    for b in range(blocks):
        block = w[b * 32 : (b + 1) * 32]
        np.testing.assert_allclose(scale[b], np.abs(block).max(axis=0) / INT4_MAX, rtol=1e-6)
    error = np.abs(dequantise(q, scale, axis=0, block_size=32) - w)
    bound = np.repeat(scale, 32, axis=0)[:k] / 2
    assert np.all(error <= bound * (1 + 1e-5))
    assert error[32:, 5].max() < 0.5  # the outlier's scale stays in block 0


def test_int4_packing_round_trips_odd_sizes():
    values = RNG.integers(-8, 8, size=(7, 3)).astype(np.int8)
    tensor = int4_tensor("w", values)
    assert tensor.data_type == TensorProto.INT4 and len(tensor.raw_data) == 11
    np.testing.assert_array_equal(int4_values(tensor), values)
    np.testing.assert_array_equal(numpy_helper.to_array(tensor).astype(np.int8), values)  # onnx agrees


def _graph(tied: str):
    """x [2, K] → MatMul(W) → y; ids → Gather(T) → e; x → lm_head (tied to T) → logits."""
    k, n, v = 100, 48, 64
    w = RNG.normal(size=(k, n)).astype(np.float32)
    t = RNG.normal(size=(v, k)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(t, "T")]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["y"], name="proj"),
        helper.make_node("Gather", ["T", "ids"], ["e"], name="embed"),
    ]
    if tied == "transpose":  # what torch's dynamo export writes for tied weights
        nodes += [
            helper.make_node("Transpose", ["T"], ["T_t"], name="tie", perm=[1, 0]),
            helper.make_node("MatMul", ["x", "T_t"], ["logits"], name="lm_head"),
        ]
    else:  # a stored transposed copy
        inits.append(numpy_helper.from_array(t.T.copy(), "lm_head.weight"))
        nodes.append(helper.make_node("MatMul", ["x", "lm_head.weight"], ["logits"], name="lm_head"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n]),
            helper.make_tensor_value_info("e", TensorProto.FLOAT, [3, k]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, v]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return model, w, t


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()  # no fusions: the portable graph's own maths
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feed
    )


@pytest.mark.parametrize("tied", ["transpose", "copy"])
@pytest.mark.parametrize("scheme", [INT8, Scheme(4, 32)], ids=["int8", "int4"])
def test_weight_only_graph_stores_the_tied_table_once(tied, scheme):
    model, w, t = _graph(tied)
    report = weight_only(model, scheme)
    onnx.checker.check_model(model, full_check=True)
    assert report.tied_embedding == "T" and sorted(report.quantised) == ["lm_head", "proj"]
    inits = {i.name: i for i in model.graph.initializer}
    assert sorted(inits) == ["T_q", "T_scale", "W_q", "W_scale"]  # one table, no float weights
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    table = dq["T_dq"]
    readers = [n.op_type for n in model.graph.node if "T_dq" in n.input]
    assert sorted(readers) == ["Gather", "Transpose"]  # both read the same DequantizeLinear
    attrs = {a.name: a.i for a in table.attribute}
    if scheme.bits == 8:
        assert attrs == {"axis": 0} and list(inits["T_scale"].dims) == [64]
        assert attrs == {"axis": 0} and {a.name: a.i for a in dq["W_dq"].attribute} == {"axis": 1}
        assert inits["W_q"].data_type == TensorProto.INT8 and list(inits["W_scale"].dims) == [48]
    else:
        assert attrs == {"axis": 1, "block_size": 32} and list(inits["T_scale"].dims) == [64, 4]
        assert {a.name: a.i for a in dq["W_dq"].attribute} == {"axis": 0, "block_size": 32}
        assert inits["W_q"].data_type == TensorProto.INT4 and list(inits["W_scale"].dims) == [4, 48]

    x = RNG.normal(size=(2, 100)).astype(np.float32)
    ids = np.array([0, 17, 63])
    y, e, logits = _run(model, {"x": x, "ids": ids})
    wq, tq = fake_quantise(w, scheme, 0), fake_quantise(t, scheme, 1)
    np.testing.assert_allclose(y, x @ wq, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(e, tq[ids])
    np.testing.assert_allclose(logits, x @ tq.T, rtol=1e-5, atol=1e-5)
    # and the quantised weights stay within the rounding bound of the fp32 ones
    step = np.abs(w).max(axis=0) / INT8_MAX if scheme.bits == 8 else None
    if step is not None:
        assert np.all(np.abs(wq - w) <= step / 2 * (1 + 1e-5))


@pytest.mark.parametrize("scheme", [INT8, Scheme(4, 32)], ids=["int8", "int4"])
def test_an_untied_embedding_table_is_quantised_per_row_for_its_gathers(scheme):
    model, _, t = _graph("copy")
    lm_head = next(i for i in model.graph.initializer if i.name == "lm_head.weight")
    lm_head.CopyFrom(numpy_helper.from_array(RNG.normal(size=(100, 64)).astype(np.float32), "lm_head.weight"))
    report = weight_only(model, scheme)
    onnx.checker.check_model(model, full_check=True)
    assert report.tied_embedding is None and report.embedding_tables == ["T"]
    inits = {i.name: i for i in model.graph.initializer}
    assert not [name for name, i in inits.items() if i.data_type == TensorProto.FLOAT and len(i.dims) == 2
                and "scale" not in name]  # fmt: skip
    ids = np.array([0, 17, 63])
    _, e, _ = _run(model, {"x": RNG.normal(size=(2, 100)).astype(np.float32), "ids": ids})
    np.testing.assert_array_equal(e, fake_quantise(t, INT8, 1)[ids])  # int8 rows at any precision
    assert inits["T_q"].data_type == TensorProto.INT8 and list(inits["T_scale"].dims) == [64]


def test_gemm_with_trans_b_and_tiny_weights():
    w = RNG.normal(size=(48, 64)).astype(np.float32)  # Gemm transB: [N, K]
    small = RNG.normal(size=(64, 8)).astype(np.float32)  # 512 values: stays float
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W"], ["y"], name="gemm", transB=1),
            helper.make_node("MatMul", ["x", "S"], ["z"], name="small"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 48]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 8]),
        ],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(small, "S")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    report = weight_only(model, Scheme(4, 32))
    assert report.quantised == ["gemm"] and "small" in report.kept_float
    scale = next(i for i in model.graph.initializer if i.name == "W_scale")
    assert list(scale.dims) == [48, 2]  # blocks along K, which is axis 1 of a transB weight
    x = RNG.normal(size=(2, 64)).astype(np.float32)
    y, z = _run(model, {"x": x})
    np.testing.assert_allclose(y, x @ fake_quantise(w, Scheme(4, 32), 1).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z, x @ small, rtol=1e-5, atol=1e-5)


def test_int4_graph_can_keep_the_tied_table_at_int8():
    model, w, t = _graph("transpose")
    report = weight_only(model, Scheme(4, 32), table_scheme=INT8)
    assert report.tied_embedding == "T"
    inits = {i.name: i for i in model.graph.initializer}
    assert inits["T_q"].data_type == TensorProto.INT8 and list(inits["T_scale"].dims) == [64]
    assert inits["W_q"].data_type == TensorProto.INT4
    table = next(n for n in model.graph.node if n.output[0] == "T_dq")
    assert {a.name: a.i for a in table.attribute} == {"axis": 0}
    x = RNG.normal(size=(2, 100)).astype(np.float32)
    y, _, logits = _run(model, {"x": x, "ids": np.array([1, 2, 3])})
    np.testing.assert_allclose(logits, x @ fake_quantise(t, INT8, 1).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, x @ fake_quantise(w, Scheme(4, 32), 0), rtol=1e-5, atol=1e-5)
