"""SmoothQuant smoothing (calibration/smoothing.py) on small hand-built decoder-like graphs: the
rewrite keeps outputs, the scales follow the formula, and patterns that do not hold are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from builder.quantize.int8_step import smoothed_fp32
from calibration.collect import collect_channel_amax
from calibration.feeds import CalibrationSet
from calibration.qdq import place
from calibration.smoothing import (
    DOWN,
    MAX_SCALE,
    QKV,
    smoothed_from_fp32,
    smoothing_plan,
    smoothing_scales,
)

C, F, S = 8, 12, 5  # hidden width, MLP width, tokens
# fp32 rounding only: each output is a sum of C or F products, each factor rescaled by s and 1/s
RTOL, ATOL = 1e-5, 1e-5


def decoder_block(
    path, qkv_extra_reader: bool = False, up_extra_reader: bool = False, fused_up: bool = False
):
    """x [1, S, C] → RMSNorm(g1) → q/k/v → q+k+v → o → +x → RMSNorm(g2) → silu(gate)·up → down → +
    → lm_head → logits. Options break one pattern each: the norm output also feeds an extra output,
    up's output also feeds one, or gate and up are one fused MatMul split in halves (as in GLM)."""
    rng = np.random.default_rng(0)
    w = {
        "g1": rng.uniform(0.5, 1.5, C) * np.where(np.arange(C) == 3, 30.0, 1.0),  # an outlier channel
        "g2": rng.uniform(0.5, 1.5, C),
        "wq": rng.standard_normal((C, C)),
        "wk": rng.standard_normal((C, C)),
        "wv": rng.standard_normal((C, C)),
        "wo": rng.standard_normal((C, C)),
        "wg": rng.standard_normal((C, F)),
        "wu": rng.standard_normal((C, F)),
        "wd": rng.standard_normal((F, C)),
        "wlm": rng.standard_normal((C, 16)),
        "eps": np.array(1e-6),
        "axes": np.array([-1], np.int64),
        "two": np.array(2.0),
    }
    if fused_up:
        w["wgu"] = np.concatenate([w.pop("wg"), w.pop("wu")], axis=1)
        w["split"] = np.array([F, F], np.int64)
    inits = [
        numpy_helper.from_array(v.astype(np.float32) if v.dtype != np.int64 else v, k) for k, v in w.items()
    ]

    def rms(x, g, out):
        return [
            helper.make_node("Pow", [x, "two"], [f"{out}.sq"], name=f"{out}.pow"),
            helper.make_node("ReduceMean", [f"{out}.sq", "axes"], [f"{out}.mean"], name=f"{out}.mean"),
            helper.make_node("Add", [f"{out}.mean", "eps"], [f"{out}.var"], name=f"{out}.add"),
            helper.make_node("Sqrt", [f"{out}.var"], [f"{out}.std"], name=f"{out}.sqrt"),
            helper.make_node("Reciprocal", [f"{out}.std"], [f"{out}.rstd"], name=f"{out}.rsqrt"),
            helper.make_node("Mul", [x, f"{out}.rstd"], [f"{out}.normed"], name=f"{out}.normalise"),
            helper.make_node("Mul", [g, f"{out}.normed"], [out], name=f"{out}.weight"),
        ]

    nodes = [
        *rms("x", "g1", "h1"),
        helper.make_node("MatMul", ["h1", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["h1", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["h1", "wv"], ["v"], name="v_proj"),
        helper.make_node("Add", ["q", "k"], ["qk"], name="qk"),
        helper.make_node("Add", ["qk", "v"], ["attn"], name="attn"),
        helper.make_node("MatMul", ["attn", "wo"], ["o"], name="o_proj"),
        helper.make_node("Add", ["x", "o"], ["r1"], name="residual1"),
        *rms("r1", "g2", "h2"),
    ]
    if fused_up:
        nodes += [
            helper.make_node("MatMul", ["h2", "wgu"], ["gu"], name="gate_up_proj"),
            helper.make_node("Split", ["gu", "split"], ["gate", "up"], axis=-1, name="chunk"),
        ]
    else:
        nodes += [
            helper.make_node("MatMul", ["h2", "wg"], ["gate"], name="gate_proj"),
            helper.make_node("MatMul", ["h2", "wu"], ["up"], name="up_proj"),
        ]
    nodes += [
        helper.make_node("Sigmoid", ["gate"], ["sig"], name="sigmoid"),
        helper.make_node("Mul", ["gate", "sig"], ["silu"], name="silu"),
        helper.make_node("Mul", ["silu", "up"], ["act"], name="gated"),
        helper.make_node("MatMul", ["act", "wd"], ["d"], name="down_proj"),
        helper.make_node("Add", ["r1", "d"], ["r2"], name="residual2"),
        helper.make_node("MatMul", ["r2", "wlm"], ["logits"], name="lm_head"),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, S, 16])]
    if qkv_extra_reader:
        nodes.append(helper.make_node("Identity", ["h1"], ["h1_copy"], name="h1_copy"))
        outputs.append(helper.make_tensor_value_info("h1_copy", TensorProto.FLOAT, [1, S, C]))
    if up_extra_reader:
        nodes.append(helper.make_node("Identity", ["up"], ["up_copy"], name="up_copy"))
        outputs.append(helper.make_tensor_value_info("up_copy", TensorProto.FLOAT, [1, S, F]))
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, S, C])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return model


def inputs(count: int, seed: int = 1) -> list[np.ndarray]:
    """Activations with two outlier channels, as in real decoders' residual streams."""
    rng = np.random.default_rng(seed)
    gain = np.ones(C, np.float32)
    gain[[2, 5]] = [40.0, 25.0]
    return [(rng.standard_normal((1, S, C)) * gain).astype(np.float32) for _ in range(count)]


def calibration(xs: list[np.ndarray]) -> CalibrationSet:
    return CalibrationSet("test inputs", len(xs), f"digest-{len(xs)}", lambda _inputs: ({"x": x} for x in xs))


def run(path, xs: list[np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(["logits"], {"x": x})[0] for x in xs]


def weights(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_plan_finds_the_norm_and_up_projection_folds(tmp_path):
    plan = smoothing_plan(decoder_block(tmp_path / "m.onnx"))
    assert plan.unmatched == {}
    assert [(t.kind, t.activation, t.consumers, t.fold) for t in plan.targets] == [
        (QKV, "h1", ("q_proj", "k_proj", "v_proj"), "g1"),
        (DOWN, "act", ("down_proj",), "wu"),
    ]
    assert plan.smoothed == ("q_proj", "k_proj", "v_proj", "down_proj")
    # The build's default: only q/k/v are smoothed; down stays as it is (and float).
    qkv_only = smoothing_plan(decoder_block(tmp_path / "m.onnx"), kinds=(QKV,))
    assert qkv_only.smoothed == ("q_proj", "k_proj", "v_proj") and qkv_only.unmatched == {}


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_smoothed_graph_equals_fp32_and_scales_follow_the_formula(tmp_path, alpha):
    fp32, out = tmp_path / "m.onnx", tmp_path / "smooth.onnx"
    plan = smoothing_plan(decoder_block(fp32))
    xs = inputs(6)
    amax, calls = collect_channel_amax(fp32, plan.tensors, calibration(xs))
    assert calls == 6
    stats = smoothed_from_fp32(fp32, out, plan, amax, alpha)

    # Independent numpy: the norm output and the gated product over the same inputs.
    w = weights(fp32)
    h1 = [x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * w["g1"] for x in xs]
    np.testing.assert_allclose(
        amax["h1"], np.max([np.abs(h).max(axis=(0, 1)) for h in h1], axis=0), rtol=1e-5
    )
    act_h1 = np.max([np.abs(h).max(axis=(0, 1)) for h in h1], axis=0)
    w_h1 = np.max([np.abs(w[k]).max(axis=1) for k in ("wq", "wk", "wv")], axis=0)
    s_qkv = act_h1**alpha / w_h1 ** (1 - alpha)
    s_down = amax["act"].astype(np.float64) ** alpha / np.abs(w["wd"]).max(axis=1) ** (1 - alpha)

    smoothed = weights(out)
    for k in ("wq", "wk", "wv"):
        np.testing.assert_allclose(smoothed[k], w[k] * s_qkv[:, None], rtol=1e-5)
    np.testing.assert_allclose(smoothed["g1"], w["g1"] / s_qkv, rtol=1e-5)
    np.testing.assert_allclose(smoothed["wd"], w["wd"] * s_down[:, None], rtol=1e-5)
    np.testing.assert_allclose(smoothed["wu"], w["wu"] / s_down[None, :], rtol=1e-5)
    for k in ("wo", "wg", "g2", "wlm"):  # nothing else moves
        np.testing.assert_array_equal(smoothed[k], w[k])

    held_out = inputs(4, seed=7)
    for before, after in zip(run(fp32, held_out), run(out, held_out), strict=True):
        np.testing.assert_allclose(after, before, rtol=RTOL, atol=ATOL * np.abs(before).max())
    # The norm weight's outlier channel is flattened: the smoothed input's largest max shrank.
    assert stats["h1"]["amax_after"] < stats["h1"]["amax_before"] / 2
    assert stats["act"]["amax_after"] == pytest.approx(float(np.max(amax["act"] / s_down)), rel=1e-5)


def test_scales_guard_zero_channels_and_clamp():
    act = np.array([4.0, 0.0, 1e12, 1.0])
    w = [np.array([[1.0, -2.0], [3.0, 0.5], [1e-12, 0.0], [0.0, 0.0]])]
    s = smoothing_scales(act, w, 0.5)
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, [np.sqrt(4.0) / np.sqrt(2.0), 1.0, MAX_SCALE, 1.0])
    # The row max runs over every consumer: a second weight with a larger row 0 lowers s_0.
    s2 = smoothing_scales(act, [w[0], np.array([[8.0], [0.1], [1.0], [1.0]])], 0.5)
    assert s2[0] == pytest.approx(np.sqrt(4.0) / np.sqrt(8.0))
    np.testing.assert_allclose(smoothing_scales(act[:1], w[:1][0][:1][None], 1.0), [4.0])


@pytest.mark.parametrize(
    ("option", "left", "why"),
    [
        ("qkv_extra_reader", ("q_proj", "k_proj", "v_proj"), "h1 also feeds h1_copy"),
        ("up_extra_reader", ("down_proj",), "have no single up-projection MatMul"),
        ("fused_up", ("down_proj",), "operands (Mul, Split) have no single up-projection MatMul"),
    ],
)
def test_unmatched_patterns_are_left_alone_and_stay_float(tmp_path, option, left, why):
    fp32, out = tmp_path / "m.onnx", tmp_path / "smooth.onnx"
    model = decoder_block(fp32, **{option: True})
    plan = smoothing_plan(model)
    assert set(plan.unmatched) == set(left)
    assert all(why in reason for reason in plan.unmatched.values())
    assert not set(plan.smoothed) & set(left) and len(plan.targets) == 1
    xs = inputs(3)
    amax, _ = collect_channel_amax(fp32, plan.tensors, calibration(xs))
    smoothed_from_fp32(fp32, out, plan, amax, 0.5)
    before, after = weights(fp32), weights(out)
    untouched = ("wq", "wk", "wv", "g1") if option == "qkv_extra_reader" else ("wd",)
    for k in untouched:
        np.testing.assert_array_equal(after[k], before[k])
    for a, b in zip(run(fp32, xs), run(out, xs), strict=True):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL * np.abs(a).max())
    placement = place(onnx.load(str(out)), smoothed=plan.smoothed)
    assert set(left) <= set(placement.excluded)  # unsmoothed sensitive projections stay float
    assert set(plan.smoothed) <= set(placement.quantised)


def test_smoothed_graph_is_reused_until_alpha_changes(tmp_path, capsys):
    fp32 = tmp_path / "text_decoder.fp32.onnx"
    decoder_block(fp32)
    data = calibration(inputs(3))
    first = smoothed_fp32("text_decoder", fp32, "h", data, 0.5, tmp_path)
    assert first is not None and first.smoothed == ("q_proj", "k_proj", "v_proj", "down_proj")
    assert first.summary["alpha"] == 0.5 and first.summary["unmatched_nodes"] == {}
    capsys.readouterr()
    again = smoothed_fp32("text_decoder", fp32, "h", data, 0.5, tmp_path)
    assert "smoothed fp32 ONNX up to date" in capsys.readouterr().err and again.sha256 == first.sha256
    other = smoothed_fp32("text_decoder", fp32, "h", data, 0.8, tmp_path)
    err = capsys.readouterr().err
    assert "channel maxima up to date" in err and "▶ smooth text_decoder (α = 0.8)" in err
    assert other.sha256 != first.sha256


def test_graph_without_decoder_patterns_is_not_smoothed(tmp_path):
    """No `logits` output (an encoder): nothing is sensitive, so nothing to smooth."""
    model = decoder_block(tmp_path / "m.onnx")
    model.graph.output[0].name = "hidden"
    model.graph.node[-1].output[0] = "hidden"
    onnx.save(model, str(tmp_path / "enc.onnx"))
    plan = smoothing_plan(model)
    assert plan.targets == () and plan.unmatched == {}
    assert (
        smoothed_fp32("vision_encoder", tmp_path / "enc.onnx", "h", calibration(inputs(1)), 0.5, tmp_path)
        is None
    )
