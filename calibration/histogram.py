"""Streamed histograms of |activation|, one per tensor, merged batch by batch in fixed memory.

A histogram has a fixed number of equal bins over [0, range]. When a batch exceeds the range, the
range grows by a whole power of two and old bins are summed in groups of that factor, so earlier
counts are kept exactly (no interpolation) and memory stays one array of `bins` counts per tensor,
whatever the number of samples.
"""

from __future__ import annotations

import math

import numpy as np

from calibration.errors import CalibrationError

DEFAULT_BINS = 2048  # TensorRT's calibration histogram size


class AbsHistogram:
    """Counts of |x| in `bins` equal bins over [0, width · bins]; `amax` is the largest |x| seen."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        self.counts = np.zeros(bins, np.int64)
        self.width = 0.0  # 0 until a non-zero value arrives
        self.amax = 0.0

    @property
    def bins(self) -> int:
        return self.counts.size

    @property
    def edges(self) -> np.ndarray:
        return np.arange(self.bins + 1) * self.width

    def update(self, values: np.ndarray, name: str = "tensor") -> None:
        magnitudes = np.abs(np.asarray(values, np.float32).ravel())
        if magnitudes.size == 0:
            return
        peak = float(magnitudes.max())
        if not math.isfinite(peak):
            raise CalibrationError(
                f"{name} holds inf or NaN during calibration, so it has no int8 range; "
                f"leave its consumer in higher precision with --exclude NODE_NAME"
            )
        self.amax = max(self.amax, peak)
        if self.width == 0.0:
            if peak == 0.0:
                self.counts[0] += magnitudes.size
                return
            self.width = peak / self.bins
        self._grow_to(peak)
        hist, _ = np.histogram(magnitudes, bins=self.bins, range=(0.0, self.width * self.bins))
        self.counts += hist

    def _grow_to(self, peak: float) -> None:
        top = self.width * self.bins
        if peak <= top:
            return
        factor = 2 ** math.ceil(math.log2(peak / top))
        while peak > self.width * factor * self.bins:  # log2 rounding at exact powers
            factor *= 2
        merged = np.zeros_like(self.counts)
        np.add.at(merged, np.arange(self.bins) // factor, self.counts)
        self.counts = merged
        self.width *= factor
