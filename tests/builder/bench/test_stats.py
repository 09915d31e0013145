"""Timing statistics: percentiles, warm-up, interleaving, and ratios from the measured medians."""

from __future__ import annotations

import numpy as np
import pytest

from builder.bench.results import latency_ratios
from builder.bench.stats import interleaved_order, summarize, time_interleaved


def test_summary_matches_numpy_percentiles():
    samples = np.random.default_rng(1).lognormal(1.0, 0.5, 37).tolist()
    summary = summarize(samples)
    assert summary.count == 37
    assert summary.p50_ms == pytest.approx(np.percentile(samples, 50))
    assert summary.p90_ms == pytest.approx(np.percentile(samples, 90))
    assert summary.p99_ms == pytest.approx(np.percentile(samples, 99))
    assert summary.mean_ms == pytest.approx(np.mean(samples))
    with pytest.raises(ValueError):
        summarize([])


def test_interleaved_order_rotates_and_is_balanced():
    order = interleaved_order(["fp32", "fp16", "int8"], 3)
    assert order == ["fp32", "fp16", "int8", "fp16", "int8", "fp32", "int8", "fp32", "fp16"]
    assert all(order.count(p) == 3 for p in ("fp32", "fp16", "int8"))


class FakeClock:
    """A timer that advances only when a run 'takes' time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_warm_up_calls_are_not_timed_and_runs_are_interleaved():
    clock, calls = FakeClock(), []
    durations = {"a": iter([5.0, 0.001, 0.002, 0.003]), "b": iter([7.0, 0.010, 0.020, 0.030])}

    def run(name):
        def call():
            calls.append(name)
            clock.now += next(durations[name])

        return call

    samples = time_interleaved({"a": run("a"), "b": run("b")}, repeats=3, warmup=1, timer=clock)
    assert calls == ["a", "b", *interleaved_order(["a", "b"], 3)]
    assert samples["a"] == pytest.approx([1.0, 2.0, 3.0])  # ms; the 5 s warm-up is not among them
    assert samples["b"] == pytest.approx([10.0, 20.0, 30.0])
    with pytest.raises(ValueError):
        time_interleaved({"a": run("a")}, repeats=0)


def test_ratios_come_from_the_p50_of_each_case():
    def row(precision, phase, batch, p50):
        return {"component": "text_decoder", "precision": precision, "phase": phase, "batch": batch, "seq": 64,
                "p50_ms": p50}  # fmt: skip

    rows = [row("fp32", "decode", 1, 20.0), row("fp16", "decode", 1, 16.0), row("int8", "decode", 1, 8.0),
            row("fp32", "decode", 8, 40.0), row("int8", "decode", 8, 30.0), row("fp32", "prefill", 1, 9.0)]  # fmt: skip
    ratios = {(r["phase"], r["batch"]): r for r in latency_ratios(rows)}
    assert ratios[("decode", 1)]["int8/fp32"] == pytest.approx(0.4)
    assert ratios[("decode", 1)]["int8/fp16"] == pytest.approx(0.5)
    assert ratios[("decode", 8)]["int8/fp32"] == pytest.approx(0.75)
    assert ratios[("decode", 8)]["int8/fp16"] is None  # fp16 not measured in that case
    assert ("prefill", 1) not in ratios  # no int8 to compare
