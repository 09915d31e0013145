"""Streamed |x| histograms: merged batches equal one histogram of all data, in fixed memory."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.errors import CalibrationError
from calibration.histogram import AbsHistogram


def test_growing_range_keeps_every_count_in_the_right_bin():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(20_000) * scale for scale in (0.5, 1.0, 7.0, 3.0, 40.0)]
    streamed = AbsHistogram(bins=2048)
    for batch in batches:
        streamed.update(batch)
        assert streamed.counts.shape == (2048,)  # memory does not grow with the data
    everything = np.abs(np.concatenate(batches)).astype(np.float32)
    assert streamed.amax == pytest.approx(float(everything.max()))
    assert streamed.width * 2048 >= streamed.amax
    direct, _ = np.histogram(everything, bins=2048, range=(0.0, streamed.width * 2048))
    assert streamed.counts.sum() == everything.size
    assert np.abs(streamed.counts - direct).sum() <= 4  # at most a few values on a bin edge


def test_range_grows_by_whole_powers_of_two():
    histogram = AbsHistogram(bins=16)
    histogram.update(np.array([1.6]))
    first = histogram.width
    histogram.update(np.array([5.0]))
    assert histogram.width / first in (2, 4, 8)
    assert histogram.counts.sum() == 2


def test_zeros_before_the_first_nonzero_value_stay_counted():
    histogram = AbsHistogram(bins=8)
    histogram.update(np.zeros(5))
    histogram.update(np.array([0.0, 2.0]))
    assert histogram.counts.sum() == 7 and histogram.counts[0] == 6


def test_non_finite_activations_are_a_clear_error():
    with pytest.raises(CalibrationError, match=r"attn_scores.*--exclude"):
        AbsHistogram().update(np.array([1.0, np.inf]), "attn_scores")
