"""AWQ (Lin et al. 2023): activation-aware per-input-channel scales for int4 weights.

At each site of calibration/smoothing.py (q/k/v and gate/up behind their RMSNorm, down behind the
up projection), the weights' rows are scaled by s and the producer by 1/s (the same exact fold
SmoothQuant uses), so the channels whose activations are large, the salient ones, get finer int4
steps. Per site,
    s_j = mean|X_j|^α, normalised so that sqrt(max s · min s) = 1,
with α from a grid (0, 0.1, …, 1; α = 0 is plain round-to-nearest) minimising
    ‖(X / s) · Q(diag(s) · W) − X · W‖²  summed over the site's consumers,
on a bounded sample of the site's input rows X from the calibration data. The mean, as in the
paper, and not the max: SmolLM2's inputs carry per-token spikes (~25,000 in a few channels on
the first token) that would set a max-based scale by one row, while the salience AWQ protects is
a channel's typical magnitude.

Memory is bounded: per site a running sum of |X| per channel and a reservoir sample of at most
`rows` input rows (uniform over every row seen, fixed seed), whatever the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from calibration.collect import activations
from calibration.feeds import CalibrationSet
from calibration.smoothing import SmoothPlan, SmoothTarget, fold_scales
from calibration.weight_only import Scheme, fake_quantise

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
# Input rows kept per tensor: GPTQ's H = XᵀX / n wants many (SmolLM2 int4 perplexity +6.6% at the
# 5,450 rows SAMPLE_BYTES allows it, +7.9% at 2,048, +11.7% at 512), bounded so that all reservoirs
# together stay under SAMPLE_BYTES (GLM-9B's 40 layers get 516 rows); the α search reads only
# SEARCH_ROWS of them.
MIN_ROWS, MAX_ROWS = 512, 8192
SAMPLE_BYTES = 2 << 30
SEARCH_ROWS = 512
MIN_SCALE, MAX_SCALE = 1e-4, 1e4


@dataclass
class SiteStats:
    """Streamed statistics of one site's input: Σ|x| per channel and a reservoir of rows."""

    channels: int
    rows: int = MAX_ROWS
    seed: int = 0

    def __post_init__(self) -> None:
        self.abs_sum = np.zeros(self.channels, np.float64)
        self.seen = 0
        self.sample = np.zeros((self.rows, self.channels), np.float32)
        self._rng = np.random.default_rng(self.seed)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32).reshape(-1, self.channels)
        self.abs_sum += np.abs(x).sum(axis=0, dtype=np.float64)
        fill = max(0, min(self.rows - self.seen, len(x)))
        self.sample[self.seen : self.seen + fill] = x[:fill]
        rest = x[fill:]
        if len(rest):  # reservoir: row number i (0-based over all rows) replaces slot j < rows
            index = self.seen + fill + np.arange(len(rest))
            slots = (self._rng.random(len(rest)) * (index + 1)).astype(np.int64)
            keep = slots < self.rows
            self.sample[slots[keep]] = rest[keep]
        self.seen += len(x)

    @property
    def mean_abs(self) -> np.ndarray:
        return (self.abs_sum / max(self.seen, 1)).astype(np.float32)

    @property
    def rows_seen(self) -> np.ndarray:
        return self.sample[: min(self.seen, self.rows)]

    def spread(self, count: int) -> np.ndarray:
        """At most `count` of the rows, evenly spaced (a reservoir not yet full holds rows in the
        order seen, so its first rows would be the first samples only)."""
        rows = self.rows_seen
        if len(rows) <= count:
            return rows
        return rows[np.linspace(0, len(rows) - 1, count).round().astype(np.int64)]


def sample_rows(channels: int) -> int:
    """Rows per reservoir when the reservoirs hold `channels` channels in all (float32)."""
    return int(np.clip(SAMPLE_BYTES // (4 * max(channels, 1)), MIN_ROWS, MAX_ROWS))


def collect_site_stats(
    graph: Path, tensors: list[str], data: CalibrationSet, rows: int | None = None
) -> dict[str, SiteStats]:
    """Run the fp32 graph over the calibration data and keep each tensor's statistics (the AWQ
    sites' inputs, and for GPTQ every quantised weight's input); `rows` per reservoir, by default
    sized from the first call's channels (sample_rows)."""
    stats: dict[str, SiteStats] = {}
    for values in activations(graph, tensors, data, "int4 statistics", "build int4 with --int4-method rtn"):
        rows = rows or sample_rows(sum(value.shape[-1] for _, value in values))
        for name, value in values:
            stats.setdefault(name, SiteStats(value.shape[-1], rows, seed=len(stats))).update(value)
    return stats


def awq_scales(mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    """s = mean|X|^α, normalised to a geometric mid-point of 1, clamped; channels never active get 1."""
    m = np.asarray(mean_abs, np.float64)
    s = np.ones_like(m)
    ok = m > 0
    s[ok] = m[ok] ** alpha
    s /= np.sqrt(s[ok].max() * s[ok].min()) if ok.any() else 1.0
    return np.clip(s, MIN_SCALE, MAX_SCALE).astype(np.float32)


def site_error(x: np.ndarray, weights: list[np.ndarray], s: np.ndarray, scheme: Scheme) -> float:
    """‖(X / s) · Q(diag(s) · W) − X · W‖² over the consumers' weights (W: [in, out])."""
    xs = x / s
    error = 0.0
    for w in weights:
        q = fake_quantise(w * s[:, None], scheme, 0)
        error += float(np.square(xs @ q - x @ w).sum(dtype=np.float64))
    return error


def search_site(
    stats: SiteStats, weights: list[np.ndarray], scheme: Scheme, alphas=ALPHAS
) -> tuple[float, np.ndarray, dict]:
    """(best α, its scales, {α: error}) for one site; ties go to the smaller α."""
    x = stats.spread(SEARCH_ROWS)
    errors = {alpha: site_error(x, weights, awq_scales(stats.mean_abs, alpha), scheme) for alpha in alphas}
    best = min(errors, key=lambda a: (errors[a], a))
    return best, awq_scales(stats.mean_abs, best), errors


def apply_awq(
    model: onnx.ModelProto, plan: SmoothPlan, stats: dict[str, SiteStats], scheme: Scheme
) -> tuple[dict, dict[str, np.ndarray]]:
    """Search α per site and fold the chosen scales into `model` (with weights), in place; returns
    the per-site summary and the scales s by site input (which now carries X / s).
    Sites are searched on the original weights, then folded one after another (a down site and
    a gate/up site both touch the up weight, on different axes, so the order does not matter)."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    chosen: list[tuple[SmoothTarget, np.ndarray]] = []
    summary = {}
    for target in plan.targets:
        weights = [numpy_helper.to_array(inits[nodes[n].input[1]]) for n in target.consumers]
        alpha, s, errors = search_site(stats[target.activation], weights, scheme)
        chosen.append((target, s))
        summary[target.activation] = {
            "kind": target.kind,
            "consumers": list(target.consumers),
            "alpha": alpha,
            "error_rtn": errors[0.0],
            "error_awq": errors[alpha],
            "rows": len(stats[target.activation].spread(SEARCH_ROWS)),
        }
    for target, s in chosen:
        fold_scales(model, target, s)
    return summary, {target.activation: s for target, s in chosen}
