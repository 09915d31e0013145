"""Timing statistics: percentiles, warm-up, interleaving, and ratios from the measured medians."""

from __future__ import annotations

import numpy as np
import pytest

from builder.bench.results import latency_ratios
from builder.bench.stats import interleaved_order, summarize, time_in_blocks


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


class Meter:
    """Counts the calls made inside it."""

    def __init__(self) -> None:
        self.entered = 0

    def __enter__(self):
        self.entered += 1

    def __exit__(self, *exc) -> None:
        pass


def test_blocks_settle_untimed_then_time_their_calls_and_rotate():
    clock, calls = FakeClock(), []
    timed = {"a": [1.0, 2.0, 3.0, 4.0, 5.0], "b": [10.0, 20.0, 30.0, 40.0, 50.0]}
    durations = {name: iter([5.0, 9.0, 9.0, *[ms / 1000 for ms in values[:2]], 9.0, 9.0,
                             *[ms / 1000 for ms in values[2:4]], 9.0, 9.0, values[4] / 1000])
                 for name, values in timed.items()}  # fmt: skip

    def run(name):
        def call():
            calls.append(name)
            clock.now += next(durations[name])

        return call

    meters = {"a": Meter(), "b": Meter()}
    samples = time_in_blocks(
        {"a": run("a"), "b": run("b")}, repeats=5, warmup=1, block=2, settle=2, meters=meters, timer=clock
    )
    # warm-up once each, then blocks of 2 settling + up to 2 timed calls, a and b taking turns
    assert calls == ["a", "b", *"aaaa", *"bbbb", *"bbbb", *"aaaa", *"aaa", *"bbb"]
    assert samples["a"] == pytest.approx(timed["a"])  # ms; the 5 s warm-up and 9 s settling not among them
    assert samples["b"] == pytest.approx(timed["b"])
    assert meters["a"].entered == meters["b"].entered == 5  # around the timed calls only
    with pytest.raises(ValueError):
        time_in_blocks({"a": run("a")}, repeats=0)


def test_blocks_settle_for_a_while_when_calls_are_short():
    """Two 10 ms calls do not outlast another engine's spinning threads: settling goes on for
    `settle_s`, then the block is timed."""
    clock, calls = FakeClock(), []

    def run(name):
        def call():
            calls.append(name)
            clock.now += 0.010

        return call

    samples = time_in_blocks({"a": run("a"), "b": run("b")}, repeats=2, warmup=0, block=2, settle=2,
                             settle_s=0.045, timer=clock)  # fmt: skip
    assert calls == [*"a" * 7, *"b" * 7]  # 5 settling calls (50 ms ≥ 45), then 2 timed
    assert samples["a"] == pytest.approx([10.0, 10.0])
    assert samples["b"] == pytest.approx([10.0, 10.0])


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
