"""Streaming range observers: MinMax, percentile and entropy (KL) over a fixed-range histogram.

Memory is O(tensors x bins): each calibration batch updates the statistics and is then dropped.
"""

from __future__ import annotations

import numpy as np

from edgekit.quantization.spec import Range

BINS = 2048


class MinMax:
    """Running min and max of a tensor."""

    def __init__(self) -> None:
        self.low, self.high = np.inf, -np.inf

    def update(self, x: np.ndarray) -> None:
        self.low = min(self.low, float(x.min()))
        self.high = max(self.high, float(x.max()))

    def range(self) -> Range:
        return Range(self.low, self.high)


class Histogram:
    """Histogram over a fixed ``[low, high]`` (from a MinMax pass), filled batch by batch."""

    def __init__(self, low: float, high: float, bins: int = BINS) -> None:
        self.low, self.high = float(low), float(max(high, low + 1e-8))
        self.counts = np.zeros(bins, dtype=np.int64)
        self.width = (self.high - self.low) / bins

    def update(self, x: np.ndarray) -> None:
        idx = ((x.ravel().astype(np.float32) - self.low) / self.width).astype(np.int64)
        np.clip(idx, 0, len(self.counts) - 1, out=idx)
        self.counts += np.bincount(idx, minlength=len(self.counts))

    def edge(self, bin_index: int) -> float:
        return self.low + bin_index * self.width

    def percentile(self, p: float) -> Range:
        """Clip both tails at ``p`` (e.g. 99.99 keeps 99.99% of values on each side)."""
        cdf = np.cumsum(self.counts) / max(self.counts.sum(), 1)
        tail = 1.0 - p / 100.0
        lo_bin = int(np.searchsorted(cdf, tail, side="left"))
        hi_bin = int(np.searchsorted(cdf, 1.0 - tail, side="left")) + 1
        low = self.low if lo_bin == 0 else self.edge(lo_bin)
        return Range(min(low, 0.0) if self.low < 0 else self.low, self.edge(min(hi_bin, len(self.counts))))

    def entropy(self, levels: int = 256) -> Range:
        """Upper clip that minimises KL(reference || quantized) (TensorRT-style), lower bound kept."""
        counts = self.counts.astype(np.float64)
        nbins = len(counts)
        best, best_kl = nbins, np.inf
        for stop in range(levels, nbins + 1, 16):
            ref = counts[:stop].copy()
            ref[stop - 1] += counts[stop:].sum()
            if ref.sum() == 0:
                continue
            chunks = np.array_split(np.arange(stop), levels)
            q = np.zeros(stop)
            for chunk in chunks:
                nonzero = counts[chunk] > 0
                if nonzero.any():
                    q[chunk[nonzero]] = counts[chunk].sum() / nonzero.sum()
            p_ = ref / ref.sum()
            q_ = q / max(q.sum(), 1e-12)
            mask = p_ > 0
            kl = float(np.sum(p_[mask] * np.log(p_[mask] / np.maximum(q_[mask], 1e-12))))
            if kl < best_kl:
                best, best_kl = stop, kl
        return Range(self.low, self.edge(best))


def final_range(method: str, minmax: MinMax, hist: Histogram | None, percentile: float) -> Range:
    """The range a method picks for one tensor."""
    if method == "minmax" or hist is None:
        return minmax.range()
    if method == "percentile":
        return hist.percentile(percentile)
    if method == "entropy":
        return hist.entropy()
    raise ValueError(f"unknown calibration method {method!r}")
