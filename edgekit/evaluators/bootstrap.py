"""Paired bootstrap intervals over evaluation samples (images, prompts), and a fast COCO AP re-accumulation.

A metric that is a mean (or a ratio of sums) over samples is re-computed on a resample from its per-sample values;
COCO mAP is re-accumulated from the per-image match records of one ``COCOeval.evaluate()`` (:class:`CocoRecords`).
A resample is a row of *multiplicities*: ``counts[b, i]`` is how often sample ``i`` was drawn in resample ``b`` (an
image drawn twice counts twice, exactly as if the dataset listed it twice).

Paired: the same resamples (one seeded ``numpy`` Generator, :data:`DEFAULT_SEED`) are applied to the reference and
to the variant, so the interval of ``reference - variant`` keeps the correlation between the two (both score the
same hard images) and is much narrower than two independent intervals. The interval is the percentile interval of
the ``resamples`` bootstrap values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 20250101
DEFAULT_CONFIDENCE = 0.95
CONFIDENCES = (0.8, 0.9, 0.95, 0.99)  # two-sided levels whose bounds are stored (``Interval.quantiles``)
QUANTILE_LEVELS = tuple(sorted({round((1 - c) / 2, 4) for c in CONFIDENCES} | {0.5} | {round((1 + c) / 2, 4) for c in CONFIDENCES}))


@lru_cache(maxsize=8)
def resample_counts(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(resamples, n) int64 multiplicities: each row draws ``n`` of the ``n`` samples with replacement. Cached and
    read-only: every metric and every variant of a run gets the very same array (the pairing, and the re-use of a
    COCO re-accumulation across metrics)."""
    if n < 1 or resamples < 1:
        raise ValueError(f"need at least one sample and one resample (got n={n}, resamples={resamples})")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    flat = (draws + n * np.arange(resamples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=resamples * n).reshape(resamples, n)
    counts.setflags(write=False)
    return counts


# --- per-sample data --------------------------------------------------------------------------------------------


class Samples:
    """What a metric keeps per sample so a resample can re-compute it: ``n`` samples of one ``unit`` (``key``
    identifies the sample set: reference and variant pair only on the same set), and ``resample(counts) -> (B,)``."""

    unit: str = "samples"
    n: int = 0
    key: Any = None

    def resample(self, counts: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def point(self) -> float:
        """The metric on the samples as they are (the identity resample)."""
        return float(self.resample(np.ones((1, self.n), dtype=np.int64))[0])


class MeanSamples(Samples):
    """A metric that is the mean of one value per sample (top-1 correct, a cosine, exact match)."""

    def __init__(self, values, unit: str = "samples", key: Any = None) -> None:
        self.values = np.asarray(values, dtype=np.float64).ravel()
        self.n, self.unit, self.key = len(self.values), unit, key if key is not None else ("n", len(self.values))

    def resample(self, counts: np.ndarray) -> np.ndarray:
        counts = np.asarray(counts, dtype=np.float64)
        return counts @ self.values / counts.sum(axis=1)


class RatioSamples(Samples):
    """A metric that is ``sum(numerator) / sum(denominator)`` over samples: a mean over steps or rows that are
    grouped in samples (token agreement over a prompt's steps): a cluster bootstrap over the samples."""

    def __init__(self, numerator, denominator, unit: str = "samples", key: Any = None) -> None:
        self.numerator = np.asarray(numerator, dtype=np.float64).ravel()
        self.denominator = np.asarray(denominator, dtype=np.float64).ravel()
        if self.numerator.shape != self.denominator.shape:
            raise ValueError(f"numerator and denominator differ in length ({self.numerator.shape} and {self.denominator.shape})")
        self.n, self.unit, self.key = len(self.numerator), unit, key if key is not None else ("n", len(self.numerator))

    def resample(self, counts: np.ndarray) -> np.ndarray:
        counts = np.asarray(counts, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return counts @ self.numerator / (counts @ self.denominator)


class FunctionSamples(Samples):
    """Any metric given as ``fn(counts) -> (B,)`` over ``n`` samples."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], n: int, unit: str = "samples", key: Any = None) -> None:
        self.fn, self.n, self.unit, self.key = fn, int(n), unit, key if key is not None else ("n", int(n))

    def resample(self, counts: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(counts), dtype=np.float64)


# --- intervals --------------------------------------------------------------------------------------------------


@dataclass
class Interval:
    """The percentile interval of a gated quantity (drop, relative drop or a ceiling's value) over the resamples."""

    low: float
    high: float
    confidence: float
    resamples: int
    seed: int
    n: int
    unit: str
    quantiles: dict[str, float] = field(default_factory=dict)  # level -> quantile ("0.975": upper bound at 95%)
    seconds: float = 0.0

    @property
    def width(self) -> float:
        return self.high - self.low


def gated_values(reference: np.ndarray | None, variant: np.ndarray, kind: Literal["absolute", "relative", "ceiling"]) -> np.ndarray:
    """Per resample: ``reference - variant`` (absolute), that over ``|reference|`` (relative), the variant (ceiling)."""
    if kind == "ceiling":
        return variant
    drop = reference - variant
    if kind == "relative":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(reference != 0, drop / np.abs(reference), np.where(drop <= 0, 0.0, np.inf))
    return drop


def percentile_interval(values: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float, dict[str, float]]:
    """(low, high) at ``confidence`` and the :data:`QUANTILE_LEVELS` quantiles of ``values`` (NaN resamples left out)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not v.size:
        return math.nan, math.nan, {}
    lo, hi = round((1 - confidence) / 2, 4), round((1 + confidence) / 2, 4)
    levels = sorted(set(QUANTILE_LEVELS) | {lo, hi})
    quantiles = {f"{q:g}": float(x) for q, x in zip(levels, np.quantile(v, levels))}
    return quantiles[f"{lo:g}"], quantiles[f"{hi:g}"], quantiles


def paired_interval(reference: Samples | None, variant: Samples, kind: Literal["absolute", "relative", "ceiling"] = "absolute",
                    resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE,
                    counts: np.ndarray | None = None) -> Interval:
    """The paired bootstrap interval of the gated quantity of ``variant`` against ``reference`` (see
    :func:`gated_values`): both re-computed on the same ``resamples`` multiplicity rows drawn with ``seed``."""
    if kind != "ceiling":
        if reference is None:
            raise ValueError("a drop needs the reference's samples")
        if reference.n != variant.n or reference.key != variant.key:
            raise ValueError(f"reference and variant were scored on different samples ({reference.n} and {variant.n} {variant.unit})")
    start = time.perf_counter()
    counts = resample_counts(variant.n, resamples, seed) if counts is None else counts
    ours = variant.resample(counts)
    theirs = reference.resample(counts) if kind != "ceiling" else None
    low, high, quantiles = percentile_interval(gated_values(theirs, ours, kind), confidence)
    return Interval(low, high, confidence, int(counts.shape[0]), seed, variant.n, variant.unit, quantiles, time.perf_counter() - start)


def bootstrap_interval(metric: Callable[[np.ndarray], np.ndarray] | Sequence[float] | np.ndarray, n: int | None = None,
                       resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """The (unpaired) percentile interval of one metric: ``metric`` is per-sample values (the metric is their mean)
    or a callable ``counts (B, n) -> (B,)`` over ``n`` samples."""
    samples = FunctionSamples(metric, n) if callable(metric) else MeanSamples(metric)
    return paired_interval(None, samples, "ceiling", resamples, seed, confidence)


def samples_needed(n: int, width: float, limit: float) -> int | None:
    """Samples for an interval of width ``2 * limit``: the width shrinks as ``1/sqrt(n)``, so ``n * (width / (2 *
    limit))**2`` rounded up (None when ``limit`` is 0: no finite set resolves a zero budget unless nothing moves)."""
    if limit <= 0 or not math.isfinite(width):
        return None
    return max(1, math.ceil(n * (width / (2 * limit)) ** 2 - 1e-9))


# --- COCO mAP from per-image match records ----------------------------------------------------------------------


@dataclass
class _Category:
    images: np.ndarray  # (n,) image row of each detection, in concatenation order (image, then the image's own order)
    order: np.ndarray  # (n,) within-image position
    scores: np.ndarray  # (n,) float64
    tp: np.ndarray  # (T, n) bool: matched, not ignored
    fp: np.ndarray  # (T, n) bool: unmatched, not ignored
    tied: np.ndarray  # (n,) bool: shares its score with another detection of the same image
    gt: np.ndarray  # (I,) non-ignored ground-truth boxes per image


class CocoRecords:
    """The per-image match records of one ``COCOeval.evaluate()`` (area "all", the last maxDets: 100), and a
    vectorized re-accumulation of COCO's 101-point interpolated AP for any resample of the images.

    On the identity resample it reproduces ``COCOeval.accumulate()`` + ``summarize()`` (mAP50-95, mAP50, mAP75);
    on a resample it equals COCOeval run on the dataset with each image listed ``counts[i]`` times (copies of an
    image next to each other), ties included: detections of one image sharing a score are expanded per copy, since
    COCO's stable sort interleaves those copies.

    How: for one category and IoU threshold, only the true positives (in score order) can be where a recall
    threshold lands, and the interpolated precision there is the running maximum over later true positives. At each
    true positive the cumulative TP count is a gather + cumsum of the multiplicities, the cumulative FP count a
    matrix product ``counts @ C`` (C: per image, false positives ranked between consecutive true positives) summed
    along, so ``B`` resamples cost a few dense array operations per category and threshold.
    """

    unit = "images"

    def __init__(self, evaluator) -> None:
        p = evaluator.params
        self.image_ids = list(p.imgIds)
        self.n = len(self.image_ids)
        self.key = ("coco", tuple(self.image_ids))
        self.iou_thresholds = np.asarray(p.iouThrs, dtype=np.float64)
        self.rec_thresholds = np.asarray(p.recThrs, dtype=np.float64)
        max_det = p.maxDets[-1]
        areas = [tuple(a) for a in p.areaRng]
        a0 = areas.index(tuple(p.areaRng[0]))  # "all"
        I0, A0, T = self.n, len(areas), len(self.iou_thresholds)
        self.categories: list[_Category] = []
        for k in range(len(p.catIds) if p.useCats else 1):
            rows = [(i, evaluator.evalImgs[k * A0 * I0 + a0 * I0 + i]) for i in range(I0)]
            rows = [(i, e) for i, e in rows if e is not None]
            if not rows:
                continue
            gt = np.zeros(I0, dtype=np.float64)
            images, order, scores, tp, fp, tied = [], [], [], [], [], []
            for i, e in rows:
                gt[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
                s = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
                if not s.size:
                    continue
                matched = np.asarray(e["dtMatches"])[:, :max_det] != 0
                ignored = np.asarray(e["dtIgnore"])[:, :max_det].astype(bool)
                images.append(np.full(s.size, i))
                order.append(np.arange(s.size))
                scores.append(s)
                tp.append(matched & ~ignored)
                fp.append(~matched & ~ignored)
                _, inverse, freq = np.unique(s, return_inverse=True, return_counts=True)
                tied.append(freq[inverse] > 1)
            if not gt.any():
                continue  # COCOeval leaves the category out (-1) when it has no ground truth
            if images:
                cat = _Category(np.concatenate(images), np.concatenate(order), np.concatenate(scores), np.concatenate(tp, axis=1),
                                np.concatenate(fp, axis=1), np.concatenate(tied), gt)
            else:
                empty = np.zeros(0, dtype=np.int64)
                cat = _Category(empty, empty, np.zeros(0), np.zeros((T, 0), bool), np.zeros((T, 0), bool), np.zeros(0, bool), gt)
            self.categories.append(cat)
        self._cache: tuple[Any, dict[str, np.ndarray]] | None = None

    def metric(self, name: str) -> Samples:
        """One of ``mAP50-95``, ``mAP50``, ``mAP75`` as :class:`Samples` (sharing this object's re-accumulation)."""
        if name not in ("mAP50-95", "mAP50", "mAP75"):
            raise KeyError(name)
        records = self
        return FunctionSamples(lambda counts: records.resample(counts)[name], self.n, self.unit, self.key)

    def resample(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """``{"mAP50-95", "mAP50", "mAP75"}`` -> (B,) for multiplicity rows ``counts`` (B, n images)."""
        if self._cache is not None and self._cache[0] is counts:
            return self._cache[1]
        out = self._resample(np.asarray(counts))
        self._cache = (counts, out)
        return out

    def _thr(self, value: float) -> int:
        return int(np.argmin(np.abs(self.iou_thresholds - value)))

    def _resample(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        if counts.ndim != 2 or counts.shape[1] != self.n:
            raise ValueError(f"counts must be (resamples, {self.n}), got {counts.shape}")
        B, T = counts.shape[0], len(self.iou_thresholds)
        m = counts.astype(np.float64)
        copies = int(counts.max()) if counts.size else 0
        rec, R, eps = self.rec_thresholds, len(self.rec_thresholds), np.spacing(1)
        ap_sum = np.zeros((B, T))  # sum over valid categories of AP
        valid = np.zeros(B)
        for cat in self.categories:
            npig = m @ cat.gt  # (B,)
            ok = npig > 0
            valid += ok
            if not cat.scores.size:
                continue
            images, order, scores, tp, fp, copy = cat.images, cat.order, cat.scores, cat.tp, cat.fp, np.zeros(cat.scores.size, np.int64)
            # weight of each entry: the image's multiplicity, or for a tied detection one copy each (weight 1[m > c])
            pseudo = images.copy()  # column of the weight matrix
            if cat.tied.any() and copies > 1:
                t_idx = np.flatnonzero(cat.tied)
                extra = np.tile(t_idx, copies - 1)
                c_extra = np.repeat(np.arange(1, copies), t_idx.size)
                images, order, scores = np.concatenate([images, images[extra]]), np.concatenate([order, order[extra]]), np.concatenate([scores, scores[extra]])
                tp, fp = np.concatenate([tp, tp[:, extra]], axis=1), np.concatenate([fp, fp[:, extra]], axis=1)
                copy = np.concatenate([copy, c_extra])
                pseudo = np.concatenate([pseudo, np.zeros(extra.size, np.int64)])
                tied = np.concatenate([cat.tied, np.ones(extra.size, bool)])
            else:
                tied = cat.tied if copies > 1 else np.zeros(scores.size, bool)
            # weight columns: n images (multiplicity), then one per (image, copy) of tied detections (1[m > copy])
            if tied.any():
                keys = images[tied] * (copies + 1) + copy[tied]
                uniq, inv = np.unique(keys, return_inverse=True)
                pseudo[tied] = self.n + inv
                W = np.concatenate([m, (counts[:, uniq // (copies + 1)] > (uniq % (copies + 1))[None, :]).astype(np.float64)], axis=1)
            else:
                W = m
            sort = np.lexsort((order, copy, images, -scores))  # COCOeval: stable sort by score of (image, copy, order)
            pseudo, tp, fp = pseudo[sort], tp[:, sort], fp[:, sort]
            used = np.unique(pseudo)
            W = W[:, used]
            col = np.searchsorted(used, pseudo)
            for t in range(T):
                pos = np.flatnonzero(tp[t])
                if not pos.size:
                    continue
                tps = np.cumsum(W[:, col[pos]], axis=1)  # (B, P): cumulative TP at each true positive
                # false positives ranked above each true positive: per weight column, how many fall before the first,
                # the second... true positive (C), summed with the weights and accumulated (false positives below
                # the last true positive change nothing)
                fpos = np.flatnonzero(fp[t])
                fpos = fpos[fpos < pos[-1]]
                if fpos.size:
                    fcol = col[fpos]
                    keep = np.unique(fcol)
                    C = np.bincount(np.searchsorted(keep, fcol) * pos.size + np.searchsorted(pos, fpos), minlength=keep.size * pos.size)
                    fps = np.cumsum(W[:, keep] @ C.reshape(keep.size, pos.size).astype(np.float64), axis=1)  # (B, P)
                else:
                    fps = np.zeros_like(tps)
                pr = tps / (fps + tps + eps)
                interp = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                with np.errstate(divide="ignore", invalid="ignore"):
                    rc = tps / npig[:, None]
                covered = np.searchsorted(rec, np.where(ok[:, None], rc, -1.0).ravel(), side="right").reshape(rc.shape)
                gained = np.diff(covered, axis=1, prepend=0)
                ap_sum[:, t] += np.where(ok, (gained * interp).sum(axis=1) / R, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_t = ap_sum / valid[:, None]
        return {"mAP50-95": per_t.mean(axis=1), "mAP50": per_t[:, self._thr(0.5)], "mAP75": per_t[:, self._thr(0.75)]}


# --- per-sample data of the families' mean metrics --------------------------------------------------------------


def generation_samples(reference: list, forced: list, free: list) -> dict[str, Samples]:
    """Per prompt, the sums behind :func:`edgekit.evaluators.generation.generation_fidelity`: token agreement, logit
    cosine and KL are means over all steps (a ratio of per-prompt sums: a cluster bootstrap over prompts), exact
    match and prefix agreement means over prompts. Maxima and minima get no interval (the bootstrap of an extreme is
    not valid)."""
    from edgekit.evaluators.generation import common_prefix, step_cosine, step_kl

    steps, agree, cos, kl = [], [], [], []
    for ref, var in zip(reference, forced):
        n = min(len(ref.tokens), len(var.tokens))
        steps.append(n)
        agree.append(float(np.sum(np.asarray(var.tokens[:n]) == np.asarray(ref.tokens[:n]))) if n else 0.0)
        cos.append(float(np.sum(step_cosine(ref.logits[:n], var.logits[:n]))) if n else 0.0)
        kl.append(float(np.sum(step_kl(ref.logits[:n], var.logits[:n]))) if n else 0.0)
    key = ("prompts", len(reference))
    exact = [float(r.tokens == f.tokens) for r, f in zip(reference, free)]
    prefix = [common_prefix(r.tokens, f.tokens) / max(len(r.tokens), 1) for r, f in zip(reference, free)]
    return {"token_agreement": RatioSamples(agree, steps, "prompts", key), "logit_cosine": RatioSamples(cos, steps, "prompts", key),
            "logit_kl": RatioSamples(kl, steps, "prompts", key), "exact_match": MeanSamples(exact, "prompts", key),
            "prefix_agreement": MeanSamples(prefix, "prompts", key)}


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64), axis=1)


def clip_samples(reference: dict, ours: dict, labels: np.ndarray | None, text_to_image: np.ndarray | None) -> dict[str, Samples]:
    """Per sample, the values behind the CLIP family's metrics (``edgekit.families.clip``): zero-shot top-k and
    agreement per zero-shot image, retrieval hits per retrieval image (its captions with it), embedding cosines per
    image, caption and class. ``image_embedding_cosine`` over two image sets (a mean of two means) gets no interval."""
    from edgekit.evaluators.retrieval import stable_rank

    out: dict[str, Samples] = {}
    if "logits" in ours and labels is not None:
        logits, labels = np.asarray(ours["logits"]), np.asarray(labels)
        key = ("zero-shot images", len(labels))
        ranks = stable_rank(logits, labels[:, None] == np.arange(logits.shape[1])[None, :])
        out["zero_shot_top1"] = MeanSamples(ranks < 1, "images", key)
        out["zero_shot_top5"] = MeanSamples(ranks < 5, "images", key)
        if "logits" in reference:
            ref = np.asarray(reference["logits"])
            out["zero_shot_top1_agreement"] = MeanSamples(ref.argmax(axis=1) == logits.argmax(axis=1), "images", key)
            if logits.shape[1] >= 5:
                top_a, top_b = np.argsort(-ref, axis=1, kind="stable")[:, :5], np.argsort(-logits, axis=1, kind="stable")[:, :5]
                out["zero_shot_top5_overlap"] = MeanSamples((top_a[:, :, None] == top_b[:, None, :]).any(axis=2).sum(axis=1) / 5, "images", key)
    if "rt_image" in ours and "caption" in ours and text_to_image is not None:
        img, txt, owner = np.asarray(ours["rt_image"], np.float64), np.asarray(ours["caption"], np.float64), np.asarray(text_to_image)
        sim = img @ txt.T
        own = owner[None, :] == np.arange(img.shape[0])[:, None]
        i2t, t2i = stable_rank(sim, own), stable_rank(sim.T, own.T)
        per_image_captions = np.bincount(owner, minlength=img.shape[0]).astype(np.float64)
        i2t_hits = np.stack([(i2t < k) for k in (1, 5, 10)]).astype(np.float64)  # (3, N_img)
        t2i_hits = np.stack([np.bincount(owner, weights=(t2i < k).astype(np.float64), minlength=img.shape[0]) for k in (1, 5, 10)])

        def mean_recall(counts: np.ndarray) -> np.ndarray:
            c = np.asarray(counts, dtype=np.float64)
            i2t_r = (c @ i2t_hits.T) / c.sum(axis=1, keepdims=True)
            t2i_r = (c @ t2i_hits.T) / (c @ per_image_captions)[:, None]
            return np.concatenate([i2t_r, t2i_r], axis=1).mean(axis=1)

        out["retrieval_mean_recall"] = FunctionSamples(mean_recall, img.shape[0], "images", ("retrieval images", img.shape[0]))
    sets = [k for k in ("zs_image", "rt_image") if reference.get(k) is not None and ours.get(k) is not None and len(ours[k])]
    if len(sets) == 1:
        out["image_embedding_cosine"] = MeanSamples(_row_cosines(reference[sets[0]], ours[sets[0]]), "images", (sets[0], len(ours[sets[0]])))
    for key, name, unit in (("caption", "text_embedding_cosine", "captions"), ("class", "class_embedding_cosine", "classes")):
        if reference.get(key) is not None and ours.get(key) is not None and len(ours[key]):
            out[name] = MeanSamples(_row_cosines(reference[key], ours[key]), unit, (key, len(ours[key])))
    return out


def output_fidelity_samples(reference: list[dict[str, np.ndarray]], outputs: list[dict[str, np.ndarray]]) -> dict[str, Samples]:
    """Per image, the sums behind the onnx family's fidelity (``edgekit.families.onnx.fidelity``): output cosine
    (a mean over images x outputs), top-1 agreement and top-5 overlap (means over class-score rows). ``max_abs_error``
    is a maximum: no interval."""
    from edgekit.evaluators.fidelity import compare_outputs
    from edgekit.families.onnx import class_scores

    key = ("images", len(reference))
    per_image = [[m["cosine"] for m in compare_outputs(r, o).values()] for r, o in zip(reference, outputs)]
    out: dict[str, Samples] = {"output_cosine": RatioSamples([sum(c) for c in per_image], [len(c) for c in per_image], "images", key)}
    for name in reference[0]:
        if class_scores(reference[0][name]) is None:
            continue
        agree, overlap, rows = [], [], []
        for r, o in zip(reference, outputs):
            a, b = class_scores(r[name]), class_scores(o[name])
            agree.append(float((a.argmax(axis=1) == b.argmax(axis=1)).sum()))
            k = min(5, a.shape[1])
            top_a, top_b = np.argsort(-a, axis=1, kind="stable")[:, :k], np.argsort(-b, axis=1, kind="stable")[:, :k]
            overlap.append(float(((top_a[:, :, None] == top_b[:, None, :]).any(axis=2).sum(axis=1) / 5).sum()))
            rows.append(a.shape[0])
        out["top1_agreement"] = RatioSamples(agree, rows, "images", key)
        out["top5_overlap"] = RatioSamples(overlap, rows, "images", key)
        break
    return out
