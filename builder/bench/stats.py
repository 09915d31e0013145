"""Timing statistics: percentiles of repeated calls, and interleaved measurement of alternatives.

Alternatives (precisions) are timed round-robin in one process, so a slow spell of the machine
(another job, frequency scaling) lands on all of them alike instead of on whichever ran then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

PERCENTILES = (50, 90, 99)


class Summary(NamedTuple):
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    count: int


def summarize(samples_ms: Sequence[float]) -> Summary:
    """Percentiles (numpy's default linear interpolation) and mean of samples in milliseconds."""
    if not len(samples_ms):
        raise ValueError("no samples to summarize")
    p50, p90, p99 = np.percentile(np.asarray(samples_ms, np.float64), PERCENTILES)
    return Summary(float(p50), float(p90), float(p99), float(np.mean(samples_ms)), len(samples_ms))


def interleaved_order(names: Sequence[str], repeats: int) -> list[str]:
    """Round-robin call order; each round starts one further along, so no alternative always
    runs right after the same other one (caches, allocator state)."""
    count = len(names)
    return [names[(r + i) % count] for r in range(repeats) for i in range(count)]


def time_interleaved(
    runs: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Milliseconds of `repeats` calls of each run, after `warmup` untimed calls of each.

    The warm-up pays for first-call costs (ONNX Runtime's allocations, lazily mapped pages) that a
    running server pays once, so they do not belong in the percentiles.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        for run in runs.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for name in interleaved_order(list(runs), repeats):
        start = timer()
        runs[name]()
        samples[name].append((timer() - start) * 1000.0)
    return samples


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator
