"""AWQ for int4 (calibration/awq.py): the sites, the exact fold, the α search, bounded statistics."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from builder.quantize.int4_step import AWQ_KINDS
from calibration.awq import (
    MAX_ROWS,
    MIN_ROWS,
    SAMPLE_BYTES,
    SiteStats,
    apply_awq,
    awq_scales,
    collect_site_stats,
    sample_rows,
    search_site,
    site_error,
)
from calibration.smoothing import DOWN, GATE_UP, QKV, fold_scales, smoothing_plan
from calibration.weight_only import Scheme
from tests.calibration.test_smoothing import ATOL, RTOL, calibration, decoder_block, inputs, run, weights

INT4_32 = Scheme(4, 32)


def test_awq_sites_include_gate_up_and_never_lm_head(tmp_path):
    plan = smoothing_plan(decoder_block(tmp_path / "m.onnx"), AWQ_KINDS)
    assert [(t.kind, t.activation, t.consumers, t.fold) for t in plan.targets] == [
        (QKV, "h1", ("q_proj", "k_proj", "v_proj"), "g1"),
        (GATE_UP, "h2", ("gate_proj", "up_proj"), "g2"),
        (DOWN, "act", ("down_proj",), "wu"),
    ]
    # GLM's fused gate_up is one site; its down projection reads a Split, so it is not scaled.
    fused = smoothing_plan(decoder_block(tmp_path / "f.onnx", fused_up=True), AWQ_KINDS)
    assert [(t.kind, t.consumers) for t in fused.targets] == [
        (QKV, ("q_proj", "k_proj", "v_proj")),
        (GATE_UP, ("gate_up_proj",)),
    ]
    assert "down_proj" in fused.unmatched


@pytest.mark.parametrize("fused_up", [False, True])
def test_awq_fold_is_exact_before_rounding(tmp_path, fused_up):
    """With the scales folded and no quantisation the graph computes what fp32 does (1e-5 relative)."""
    fp32, out = tmp_path / "m.onnx", tmp_path / "awq.onnx"
    decoder_block(fp32, fused_up=fused_up)
    model = onnx.load(str(fp32))
    plan = smoothing_plan(model, AWQ_KINDS)
    stats = collect_site_stats(fp32, plan.tensors, calibration(inputs(6)))
    for target in plan.targets:  # α = 1: the strongest scaling the search can pick
        s = awq_scales(stats[target.activation].mean_abs, 1.0)
        assert s.max() / s.min() > 2  # a real rescaling, not a no-op
        fold_scales(model, target, s)
    onnx.save(model, str(out))
    held_out = inputs(4, seed=7)
    for before, after in zip(run(fp32, held_out), run(out, held_out), strict=True):
        np.testing.assert_allclose(after, before, rtol=RTOL, atol=ATOL * np.abs(before).max())
    w, scaled = weights(fp32), weights(out)
    assert not np.allclose(scaled["g1"], w["g1"]) and not np.allclose(scaled["g2"], w["g2"])
    np.testing.assert_array_equal(scaled["wo"], w["wo"])  # o_proj has no exact fold: untouched
    np.testing.assert_array_equal(scaled["wlm"], w["wlm"])  # nor lm_head (tied to the embedding)


def test_apply_awq_records_alpha_per_site(tmp_path):
    fp32 = tmp_path / "m.onnx"
    decoder_block(fp32)
    model = onnx.load(str(fp32))
    plan = smoothing_plan(model, AWQ_KINDS)
    stats = collect_site_stats(fp32, plan.tensors, calibration(inputs(6)))
    summary, scales = apply_awq(model, plan, stats, INT4_32)
    assert set(summary) == {"h1", "h2", "act"}
    for site in summary.values():
        assert 0.0 <= site["alpha"] <= 1.0 and site["error_awq"] <= site["error_rtn"]
        assert site["rows"] == 6 * 5  # every row of the six [1, 5, C] inputs
    assert set(scales) == set(summary) and all(s.shape == (stats[a].channels,) for a, s in scales.items())


def outlier_case(seed: int = 0):
    """Activations [512, 128] with four channels 30-60x larger than the rest, weights N(0, 1)."""
    rng = np.random.default_rng(seed)
    gain = np.ones(128, np.float32)
    gain[[3, 40, 77, 100]] = [30.0, 45.0, 60.0, 35.0]
    x = (rng.standard_normal((512, 128)) * gain).astype(np.float32)
    w = rng.standard_normal((128, 96)).astype(np.float32)
    return x, w


def test_awq_error_is_below_rtn_on_outlier_channels():
    x, w = outlier_case()
    stats = SiteStats(128, rows=512)
    stats.update(x)
    alpha, s, errors = search_site(stats, [w], INT4_32)
    rtn = site_error(x, [w], np.ones(128, np.float32), INT4_32)
    assert errors[0.0] == pytest.approx(rtn)  # α = 0 is plain round-to-nearest
    assert alpha > 0 and errors[alpha] < 0.8 * rtn  # AWQ: at least 20% less output error here
    # and on rows the search did not see
    x2, _ = outlier_case(seed=1)
    assert site_error(x2, [w], s, INT4_32) < site_error(x2, [w], np.ones(128, np.float32), INT4_32)


def test_site_statistics_memory_is_bounded():
    rng = np.random.default_rng(0)
    stats = SiteStats(16, rows=64)
    batches = [rng.standard_normal((1, 100, 16)).astype(np.float32) for _ in range(10)]
    for batch in batches:
        stats.update(batch)
    assert stats.seen == 1000 and stats.sample.shape == (64, 16) and stats.rows_seen.shape == (64, 16)
    every_row = np.concatenate([b.reshape(-1, 16) for b in batches])
    np.testing.assert_allclose(stats.mean_abs, np.abs(every_row).mean(axis=0), rtol=1e-5)
    # the reservoir holds real rows, drawn from all batches, not only the first
    index = {row.tobytes(): i for i, row in enumerate(every_row)}
    drawn = [index[row.tobytes()] for row in stats.sample]
    assert len(set(drawn)) == 64 and max(drawn) >= 500


def test_reservoirs_shrink_with_the_model_and_the_search_spreads_its_rows():
    smollm2 = 30 * (3 * 576 + 1536) + 576  # SmolLM2's 121 weight inputs: bounded by bytes, not rows
    assert 2048 < sample_rows(smollm2) == SAMPLE_BYTES // (4 * smollm2) < MAX_ROWS
    assert sample_rows(1000) == MAX_ROWS
    assert MIN_ROWS <= sample_rows(40 * (3 * 4096 + 13696)) < 520  # GLM-9B's 160
    assert sample_rows(500_000) == 1073 and sample_rows(10**8) == MIN_ROWS
    stats = SiteStats(4, rows=1000)
    stats.update(np.arange(600 * 4, dtype=np.float32).reshape(600, 4))  # not full: rows in order seen
    spread = stats.spread(100)
    assert len(spread) == 100 and spread[0, 0] == 0 and spread[-1, 0] == 599 * 4
    assert len(stats.spread(1000)) == 600
