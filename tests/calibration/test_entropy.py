"""The KL threshold search against an independent reference and ONNX Runtime's entropy calibrator.

Reference: a literal, loop-by-loop transcription of the published algorithm (TensorRT's 8-bit
inference talk, as NVIDIA's pytorch-quantization implements it), with scipy's KL divergence.
Tolerances: our KL curve equals the reference's to 1e-9 (same infinities) and the chosen
threshold is the same bin. ONNX Runtime implements a variant (signed histogram, remainder bins
folded into the last level, integer-truncated and smoothed Q), so its threshold agrees within 15%
on Gaussian and Laplace data; with rare outliers both clip them (threshold < 20% of the max).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import entropy

from calibration.entropy import QUANTIZED_BINS, entropy_threshold, kl_divergences
from calibration.histogram import AbsHistogram


def reference_divergences(counts: np.ndarray, levels: int = QUANTIZED_BINS) -> np.ndarray:
    bins = counts.astype(np.float64)
    divergences = []
    for i in range(levels, len(bins) + 1):
        space = np.linspace(0, i, num=levels + 1)
        level_of = np.digitize(range(i), space) - 1
        level_of[bins[:i] == 0] = -1  # empty bins get no share of their level
        level_counts = np.zeros(levels)
        for index, level in enumerate(level_of):
            if level != -1:
                level_counts[level] += bins[index]
        for level, members in Counter(level_of).items():
            if level != -1:
                level_counts[level] /= members
        candidate = np.zeros(i)
        for index, level in enumerate(level_of):
            if level != -1:
                candidate[index] = level_counts[level]
        reference = bins[:i].copy()
        reference[-1] += bins[i:].sum()  # outliers fold into the last kept bin
        divergences.append(entropy(reference, candidate))  # normalises both
    return np.array(divergences)


def samples(kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.standard_normal(300_000).astype(np.float32)
    if kind == "laplace":
        return rng.laplace(size=300_000).astype(np.float32)
    return np.concatenate([rng.standard_normal(300_000), [60.0, -45.0, 38.0]]).astype(np.float32)


@pytest.mark.parametrize("kind", ["gaussian", "laplace", "outliers"])
def test_kl_curve_and_threshold_equal_the_reference(kind):
    histogram = AbsHistogram(bins=1024)  # smaller than 2048 so the loop reference stays quick
    for part in np.array_split(samples(kind), 5):
        histogram.update(part)
    ours = kl_divergences(histogram.counts)
    reference = reference_divergences(histogram.counts)
    finite = np.isfinite(reference)
    np.testing.assert_array_equal(np.isfinite(ours), finite)
    np.testing.assert_allclose(ours[finite], reference[finite], rtol=0, atol=1e-9)
    best = len(reference) - 1 - int(np.argmin(reference[::-1]))
    assert entropy_threshold(histogram) == pytest.approx((best + QUANTIZED_BINS) * histogram.width, rel=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "laplace", "outliers"])
def test_threshold_agrees_with_onnxruntime_entropy_calibrator(kind):
    from onnxruntime.quantization.calibrate import HistogramCollector

    data = samples(kind, seed=1)
    histogram = AbsHistogram()
    histogram.update(data)
    ours = entropy_threshold(histogram)
    # Same resolution: 2048 bins per side, 128 levels per side.
    collector = HistogramCollector("entropy", True, 4096, 2 * QUANTIZED_BINS, None, None)
    collector.collect({"x": data})
    ort = float(collector.compute_collection_result()["x"][1])
    if kind == "outliers":
        assert ours < 0.2 * histogram.amax and ort < 0.2 * histogram.amax
    else:
        assert ort == pytest.approx(ours, rel=0.15)


def test_gaussian_threshold_clips_only_the_far_tail():
    histogram = AbsHistogram()
    histogram.update(samples("gaussian"))
    threshold = entropy_threshold(histogram)
    assert 3.0 < threshold < histogram.amax  # in standard deviations


def test_uniform_data_is_not_clipped():
    histogram = AbsHistogram()
    histogram.update(np.random.default_rng(2).uniform(-3, 3, 200_000))
    assert entropy_threshold(histogram) == pytest.approx(histogram.amax, rel=0.02)


def test_all_zero_tensor_gets_a_usable_threshold():
    histogram = AbsHistogram()
    histogram.update(np.zeros(100))
    assert entropy_threshold(histogram) > 0
