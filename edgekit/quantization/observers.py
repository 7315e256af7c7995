"""Streaming range observers: MinMax, and percentile, entropy (KL) and MSE over a fixed-range histogram.

Memory is O(tensors x bins): each calibration batch updates the statistics and is then dropped.

``mse`` chooses, per tensor, the clipping range that minimises the expected 8-bit quantization error of the values
the histogram saw (the clipping + rounding-noise model of Banner et al., ACIQ, with zero's dead zone): for a grid ``[a, b]``
(``a <= 0 <= b``, zero exactly representable, as ``QParams.from_range`` builds it) with step
``d = (b - a) / (levels - 1)``, over bins of centre ``c`` and count ``n``::

    E(a, b) = sum_{c < a} n (a - c)^2  +  sum_{c > b} n (c - b)^2  +  sum_{|c| < d/2} n (c^2 + w^2/12)
              +  (sum_{a <= c <= b, |c| >= d/2} n) * d^2 / 12

(``w``: the bin width; values within half a step of zero round to the exact zero point, the rest carry uniform
rounding noise ``d^2/12``; ``a`` and ``b`` are the clip points after the zero point is rounded, as in the real grid),

evaluated for every candidate pair at once from prefix sums of ``n``, ``n c`` and ``n c^2`` (coarse grid of bin
edges, then every edge around the best pair). It is label-free: the calibration images alone choose the range.
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

    def centers(self) -> np.ndarray:
        return self.low + (np.arange(len(self.counts)) + 0.5) * self.width

    def quantization_mse(self, low: np.ndarray | float, high: np.ndarray | float, levels: int = 256) -> np.ndarray:
        """Expected squared error per value of an 8-bit grid ``[min(low, 0), max(high, 0)]`` with ``levels`` levels
        (256: asymmetric uint8/int8; 255 with ``low = -high``: symmetric int8), over the histogram (see the module doc).
        ``low`` and ``high`` broadcast against each other: every pair is scored in one vectorised pass."""
        n = self.counts.astype(np.float64)
        c = self.centers()
        cum0 = np.concatenate([[0.0], np.cumsum(n)])
        cum1 = np.concatenate([[0.0], np.cumsum(n * c)])
        cum2 = np.concatenate([[0.0], np.cumsum(n * c * c)])
        a = np.minimum(np.asarray(low, dtype=np.float64), 0.0)
        b = np.maximum(np.asarray(high, dtype=np.float64), 0.0)
        step = np.maximum(b - a, 1e-12) / (levels - 1)
        # the grid QParams.from_range builds: the zero point rounded, so the real clip points are whole steps from zero
        a = -np.clip(np.rint(-a / step), 0, levels - 1) * step
        b = a + (levels - 1) * step
        il = np.searchsorted(c, a, side="left")  # bins [0, il) lie below a: clipped up to a
        ir = np.searchsorted(c, b, side="right")  # bins [ir, B) lie above b: clipped down to b
        below = a * a * cum0[il] - 2.0 * a * cum1[il] + cum2[il]
        above = (cum2[-1] - cum2[ir]) - 2.0 * b * (cum1[-1] - cum1[ir]) + b * b * (cum0[-1] - cum0[ir])
        # values within half a step of zero round to the exact zero point: their error is x^2 (bin centre c and the
        # bin's own spread w^2/12), not step^2/12 (post-activation tensors pile up there)
        zl = np.maximum(np.searchsorted(c, np.maximum(-step / 2.0, a), side="left"), il)
        zr = np.minimum(np.searchsorted(c, np.minimum(step / 2.0, b), side="right"), ir)
        zr = np.maximum(zr, zl)
        near_zero = (cum2[zr] - cum2[zl]) + (cum0[zr] - cum0[zl]) * self.width * self.width / 12.0
        rounding = (cum0[ir] - cum0[il] - (cum0[zr] - cum0[zl])) * step * step / 12.0
        return (np.maximum(below, 0.0) + np.maximum(above, 0.0) + near_zero + rounding) / max(cum0[-1], 1.0)

    def mse(self, symmetric: bool = False, coarse: int = 128) -> Range:
        """The clipping range of least expected quantization MSE (module doc), candidates at bin edges.

        Asymmetric (``symmetric=False``: ONNX Runtime's uint8 and LiteRT's int8 activations): the lower and upper
        clips are chosen jointly, the lower one only where the tensor has negative values (a non-negative tensor keeps
        its observed low, a non-positive one its high). ``symmetric=True`` (TensorRT's int8): one bound ``T``,
        range ``[-T, T]``, 255 levels. Deterministic: ties go to the first (widest lower, narrowest upper) candidate.
        """
        edges = self.low + np.arange(len(self.counts) + 1) * self.width
        edges[-1] = self.high
        if self.counts.sum() == 0:
            return Range(self.low, self.high)
        if symmetric:
            bound = max(abs(self.low), abs(self.high))
            cand = np.unique(np.abs(edges[(edges != 0)]))
            cand = cand[cand <= bound]
            cand = cand if len(cand) else np.array([bound])
            errors = self.quantization_mse(-cand, cand, levels=255)
            t = float(cand[int(np.argmin(errors))])
            return Range(-t, t)
        lows = edges[edges <= 0.0] if self.low < 0 else np.array([self.low])
        highs = edges[edges >= 0.0] if self.high > 0 else np.array([self.high])
        sa, sb = max(1, -(-len(lows) // coarse)), max(1, -(-len(highs) // coarse))
        ia, ib = self._best_pair(lows, highs, np.arange(0, len(lows), sa), np.arange(0, len(highs), sb))
        ia, ib = self._best_pair(lows, highs, np.arange(max(ia - sa, 0), min(ia + sa + 1, len(lows))),
                                 np.arange(max(ib - sb, 0), min(ib + sb + 1, len(highs))))
        return Range(float(lows[ia]), float(highs[ib]))

    def _best_pair(self, lows: np.ndarray, highs: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> tuple[int, int]:
        errors = self.quantization_mse(lows[ia][:, None], highs[ib][None, :])
        i, j = np.unravel_index(int(np.argmin(errors)), errors.shape)
        return int(ia[i]), int(ib[j])

    def entropy(self, levels: int = 256) -> Range:
        """Upper clip that minimises KL(reference || quantized) (TensorRT-style), lower bound kept.

        For each candidate ``stop`` (every 16th bin from ``levels``): the reference is the histogram up to ``stop``
        with the clipped tail folded into its last bin; the quantized one merges those bins into ``levels`` chunks
        (``np.array_split`` sizes) and spreads each chunk's count over its non-empty bins. Each candidate is scored
        with array operations (chunk sums by ``np.add.reduceat``), not a Python loop over chunks.
        """
        counts = self.counts.astype(np.float64)
        nbins = len(counts)
        nonzero_all = (counts > 0).astype(np.float64)
        tails = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # tails[i] = counts[i:].sum()
        best, best_kl = nbins, np.inf
        for stop in range(levels, nbins + 1, 16):
            ref = counts[:stop].copy()
            ref[stop - 1] += tails[stop]
            total = ref.sum()
            if total == 0:
                continue
            size, extra = divmod(stop, levels)  # np.array_split: the first `extra` chunks hold size + 1 bins
            starts = np.concatenate([np.arange(extra + 1) * (size + 1), extra * (size + 1) + np.arange(1, levels - extra) * size]).astype(np.int64)
            chunk_sum = np.add.reduceat(counts[:stop], starts)
            chunk_nnz = np.add.reduceat(nonzero_all[:stop], starts)
            per_bin = np.repeat(chunk_sum / np.maximum(chunk_nnz, 1.0), np.diff(np.append(starts, stop)))
            q = np.where(counts[:stop] > 0, per_bin, 0.0)
            p_ = ref / total
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
    if method == "mse":
        return hist.mse()
    raise ValueError(f"unknown calibration method {method!r}")
