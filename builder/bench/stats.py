"""Timing statistics: percentiles of repeated calls, and interleaved measurement of alternatives.

Alternatives (precisions) are timed in short blocks, round-robin, in one process, so a slow spell of
the machine (another job, frequency scaling) lands on all of them alike instead of on whichever ran
then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
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


def time_in_blocks(
    runs: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    block: int = 5,
    settle: int = 2,
    settle_s: float = 0.1,
    meters: Mapping[str, AbstractContextManager] | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Milliseconds of `repeats` calls of each run, after `warmup` untimed calls of each.

    Calls are timed in blocks of up to `block` consecutive calls of one run, the runs' blocks
    round-robin. Each block first makes untimed calls, at least `settle` of them and for at least
    `settle_s` seconds: engines keep their threads spinning between calls, as a lone serving engine
    does, so the engine timed before has to fall idle and this one's weights come back into cache
    before its timing starts. (Measured on 2 cores: an int4 decode step ran 1.3-1.8x slower for
    ~50 ms after the fp32 engine's last call, which two of its own ~6 ms calls did not cover.)
    The warm-up pays for first-call costs (ONNX Runtime's allocations, lazily mapped pages) that a
    running server pays once, so they do not belong in the percentiles. `meters`: a context
    manager per run, entered around each timed call (CPU time, energy).
    """
    if repeats < 1 or block < 1:
        raise ValueError(f"repeats and block must be at least 1, got {repeats} and {block}")
    for _ in range(warmup):
        for run in runs.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for name in interleaved_order(list(runs), -(-repeats // block)):
        settled, start = 0, timer()
        while settled < settle or timer() - start < settle_s:
            runs[name]()
            settled += 1
        for _ in range(min(block, repeats - len(samples[name]))):
            with meters[name] if meters else nullcontext():
                start = timer()
                runs[name]()
                samples[name].append((timer() - start) * 1000.0)
    return samples


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator
