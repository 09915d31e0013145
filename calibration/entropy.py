"""The entropy (KL-divergence) threshold search with TensorRT's EntropyCalibration2 semantics.

Given the |x| histogram (2048 bins), each candidate threshold keeps the first i bins (i = 128 …
2048). The reference distribution P is those bins with every count beyond them added to the last
one; the candidate Q quantises the same i bins into 128 levels (bin b goes to level b·128 // i),
then spreads each level's count evenly over its non-empty bins. The threshold is the upper edge of
bin i for the i minimising KL(P‖Q) (the last one on ties), as in NVIDIA's pytorch-quantization
`_compute_amax_entropy`. An empty bin that P needs (outliers folded into it) gives KL = ∞.

Computed for all candidates at once from prefix sums, O(bins · 128) in total.
"""

from __future__ import annotations

import numpy as np

from calibration.histogram import AbsHistogram

QUANTIZED_BINS = 128  # int8 has 127 positive levels plus zero; TensorRT quantises to 128
INT8_MAX = 127


def kl_divergences(counts: np.ndarray, levels: int = QUANTIZED_BINS) -> np.ndarray:
    """KL(P‖Q) for i = levels … len(counts) reference bins: float64 [len(counts) - levels + 1]."""
    c = np.asarray(counts, np.float64)
    n = c.size
    if n < levels:
        raise ValueError(f"a histogram of {n} bins cannot be quantised to {levels} levels")
    total = c.sum()
    cum = np.concatenate(([0.0], np.cumsum(c)))
    with np.errstate(divide="ignore", invalid="ignore"):
        clogc = np.where(c > 0, c * np.log(np.where(c > 0, c, 1.0)), 0.0)
    cum_clogc = np.concatenate(([0.0], np.cumsum(clogc)))
    cum_nonzero = np.concatenate(([0], np.cumsum(c > 0)))

    i = np.arange(levels, n + 1)[:, None]  # [K, 1] candidate bin counts
    j = np.arange(levels + 1)[None, :]  # level boundaries
    starts = -((-j * i) // levels)  # first bin of level j: ceil(j·i / levels); starts[:, -1] = i
    level_sum = np.diff(cum[starts], axis=1)  # S_j [K, levels]
    level_nonzero = np.diff(cum_nonzero[starts], axis=1)  # N_j
    kept = cum[i[:, 0]]  # C_i: counts inside the candidate range
    last = c[i[:, 0] - 1]
    outliers = total - kept

    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.log(level_sum / (level_nonzero * kept[:, None]))  # per level, normalised
        cross = np.where(level_sum > 0, level_sum * log_q, 0.0).sum(axis=1)  # Σ_b c_b log q_b, b < i
        # Bins before the last: Σ p log p − Σ p log q with p = c / total.
        head = (cum_clogc[i[:, 0] - 1] - np.log(total) * cum[i[:, 0] - 1]) / total
        head_cross = (cross - np.where(last > 0, last * log_q[:, -1], 0.0)) / total
        p_last = (last + outliers) / total
        q_last = np.where(last > 0, np.exp(log_q[:, -1]), 0.0)
        tail = np.where(p_last > 0, p_last * np.log(p_last / q_last), 0.0)
    kl = head - head_cross + tail
    return np.where(np.isnan(kl), np.inf, kl)


def entropy_threshold(histogram: AbsHistogram, levels: int = QUANTIZED_BINS) -> float:
    """The |x| threshold that minimises KL(P‖Q); the scale is threshold / 127."""
    if histogram.width == 0.0 or histogram.counts.sum() == 0:
        return 1.0  # the tensor was always zero: any scale represents it exactly
    kl = kl_divergences(histogram.counts, levels)
    if not np.isfinite(kl).any():
        return float(histogram.amax)
    best = kl.size - 1 - int(np.argmin(kl[::-1]))  # the last minimum, as pytorch-quantization
    return float((best + levels) * histogram.width)


def scale_from_threshold(threshold: float) -> float:
    return threshold / INT8_MAX
