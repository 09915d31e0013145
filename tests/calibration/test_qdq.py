"""Q/DQ placement on small real graphs, the int8 → uint8 activation rewrite, and the decoder feeds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from builder.quantize.text_decoder_feeds import prefill_feed
from calibration.errors import CalibrationError
from calibration.qdq import activation_scales, place, qdq_from_fp32, u8_activations


def three_matmuls(path, with_weights: bool = True) -> onnx.ModelProto:
    """x [B, 8] → MatMul(w1) → Relu → MatMul(w2) → Relu → MatMul(w3) → logits [B, 4]."""
    rng = np.random.default_rng(0)
    shapes = {"w1": (8, 16), "w2": (16, 16), "w3": (16, 4)}
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in shapes.items()]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="layer0.up"),
        helper.make_node("Relu", ["h1"], ["a1"], name="act0"),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="layer1.up"),
        helper.make_node("Relu", ["h2"], ["a2"], name="act1"),
        helper.make_node("MatMul", ["a2", "w3"], ["logits"], name="lm_head"),
    ]
    if not with_weights:
        nodes = [helper.make_node("Add", ["x", "x"], ["logits"], name="add")]
        inits = []
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4 if with_weights else 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    onnx.save(model, str(path))
    return model


def test_placement_keeps_lm_head_float_and_honours_excludes(tmp_path):
    model = three_matmuls(tmp_path / "m.onnx")
    default = place(model)
    assert default.candidates == {"layer0.up": "x", "layer1.up": "a1", "lm_head": "a2"}
    assert default.quantised == ("layer0.up", "layer1.up")
    assert "lm_head" in default.excluded
    narrowed = place(model, ["layer1*"])
    assert narrowed.quantised == ("layer0.up",) and narrowed.tensors == ["x"]
    with pytest.raises(CalibrationError, match="'nope' matches none of the 3 quantisable nodes"):
        place(model, ["nope"])
    with pytest.raises(CalibrationError, match="every quantisable node is excluded"):
        place(model, ["layer*"])


def test_graph_without_quantisable_ops_is_a_clear_error(tmp_path):
    with pytest.raises(CalibrationError, match="no MatMul, Gemm or Conv with a constant weight"):
        place(three_matmuls(tmp_path / "m.onnx", with_weights=False))


def test_qdq_graph_is_tensorrt_style_and_its_uint8_engine_view_is_bit_exact(tmp_path):
    three_matmuls(tmp_path / "fp32.onnx")
    model = onnx.load(str(tmp_path / "fp32.onnx"))
    placement = place(model)
    thresholds = {"x": 2.5, "a1": 6.0, "a2": 9.0}
    qdq_from_fp32(tmp_path / "fp32.onnx", thresholds, placement, tmp_path / "int8.onnx")
    int8 = onnx.load(str(tmp_path / "int8.onnx"))
    producer = {out: node for node in int8.graph.node for out in node.output}
    inits = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    for node in int8.graph.node:
        if node.op_type != "MatMul":
            continue
        activation, weight = producer.get(node.input[0]), producer.get(node.input[1])
        if node.name == "lm_head":  # higher precision: no Q/DQ on its inputs
            assert activation.op_type == "Relu" and node.input[1] in inits
            continue
        assert activation.op_type == "DequantizeLinear"
        assert producer[activation.input[0]].op_type == "QuantizeLinear"  # Q/DQ pair on the input
        assert inits[activation.input[2]].dtype == np.int8 and int(inits[activation.input[2]]) == 0
        assert weight.op_type == "DequantizeLinear" and inits[weight.input[0]].dtype == np.int8
        assert inits[weight.input[1]].shape == (16,)  # one scale per output channel
    assert activation_scales(int8) == {"x": np.float32(2.5 / 127), "a1": np.float32(6.0 / 127)}

    changed = u8_activations(int8)
    assert changed == 2
    onnx.save(int8, str(tmp_path / "u8.onnx"))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # Q/DQ as written
    x = {"x": np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32) * 2}
    runs = [
        ort.InferenceSession(str(tmp_path / name), options, providers=["CPUExecutionProvider"]).run(None, x)[
            0
        ]
        for name in ("int8.onnx", "u8.onnx")
    ]
    np.testing.assert_array_equal(runs[0], runs[1])


def test_decoder_feeds_fill_inputs_the_contract_does_not_name():
    def declared(name, kind, shape):
        return SimpleNamespace(name=name, type=f"tensor({kind})", shape=shape)

    inputs = [
        declared("input_ids", "int64", ["batch", "seq"]),
        declared("position_ids", "int64", [3, "batch", "seq"]),
        declared("past_lens", "int64", ["batch"]),
        declared("block_tables", "int64", ["batch", "blocks"]),
        declared("logit_index", "int64", ["batch", "logit_positions"]),
        declared("key_cache.0", "float", ["pool_blocks", 16, 2, 8]),
        declared("media_embeds", "float", ["media_tokens", 32]),
        declared("media_rows", "int64", ["batch", "seq"]),
        declared("image_mask", "bool", ["batch", "seq"]),
    ]
    feed = prefill_feed(inputs, [5, 6, 7])
    assert feed["input_ids"].tolist() == [[5, 6, 7]]
    assert feed["position_ids"].shape == (3, 1, 3) and feed["position_ids"][2, 0].tolist() == [0, 1, 2]
    assert feed["past_lens"].tolist() == [0] and feed["logit_index"].tolist() == [[2]]
    assert feed["key_cache.0"].shape == (1, 16, 2, 8) and not feed["key_cache.0"].any()
    assert feed["media_embeds"].shape == (1, 32) and feed["media_rows"].tolist() == [[-1, -1, -1]]
    assert feed["image_mask"].dtype == np.bool_ and not feed["image_mask"].any()
