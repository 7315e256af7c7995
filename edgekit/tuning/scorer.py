"""Tuning scorers: one graph's candidate ONNX model scored label-free against the FP32 graph on the tuning samples.

Every choice made by looking at accuracy (range method, which groups stay float) asks a :class:`TuningScorer`,
never the evaluation set. A scorer runs candidates with ONNX Runtime (the portable Q/DQ form every placement is
written in), computes the FP32 reference once, and returns a score where 1.0 means "same as FP32"; ``loss_pt`` is
``100 (1 - score)``, the unit budgets, sensitivity tables and search traces use.

* :class:`DetectionScorer` (detectors' float-scope search): :func:`edgekit.tuning.proxy.pseudo_map` at confidence
  0.5, mAP50-95 of the candidate against FP32's detections (``benchmarks/proxy_correlation.py``: Spearman 0.83 with
  the true drop on held-out labelled images).
* :class:`TokenAgreementScorer` (decoders): teacher-forced top-1 token agreement of the candidate's logits with
  FP32's over the positions that predict FP32's own greedy continuation.
* :class:`OutputCosineScorer` (any graph, and detectors' range method and bias correction): mean over samples of the
  smallest output cosine (on the same benchmark's held-out halves, the range candidate it prefers has the smallest
  true drop more often: mean regret 0.11 pt against 0.26 for pseudo_map@0.5).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.tuning.proxy import (
    DEFAULT_PSEUDO_CONF,
    coco_from_dict,
    map_by_subset,
    output_cosine,
    pseudo_ground_truth,
    pseudo_map,
)

Feed = dict[str, np.ndarray]


def ort_runner(path: str | Path, threads: int):
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path, threads=threads)
    runner.load()
    return runner


class TuningScorer(abc.ABC):
    """Scores candidate models of one graph against its FP32 model on tuning samples (label-free; 1.0 = FP32)."""

    name: str = "abstract"

    def __init__(self, fp32: str | Path, samples: Sequence[Any], threads: int = 2) -> None:
        self.fp32, self.samples, self.threads = Path(fp32), list(samples), threads
        self._reference: Any = None
        self.seconds = 0.0  # time spent scoring, reference included

    @property
    def description(self) -> str:
        return self.name

    def subset(self, count: int | None) -> TuningScorer:
        """The same scorer on the first ``count`` samples (its own FP32 reference): the search scores dozens of
        candidates, so it trades some resolution for time."""
        import copy

        if count is None or count >= len(self.samples):
            return self
        other = copy.copy(self)
        other.samples, other._reference, other.seconds = self.samples[:count], None, 0.0
        if hasattr(other, "sizes"):
            other.sizes = {}
        return other

    def at(self, indices: Sequence[int]) -> TuningScorer:
        """The same scorer on the samples at ``indices`` (its own FP32 reference)."""
        import copy

        other = copy.copy(self)
        other.samples, other._reference, other.seconds = [self.samples[i] for i in indices], None, 0.0
        if hasattr(other, "sizes"):
            other.sizes = {}
        return other

    def rest(self, count: int | None) -> TuningScorer | None:
        """The same scorer on the samples after the first ``count`` (those :meth:`subset` leaves out): fresh tuning
        samples to confirm a choice on. None when there are none."""
        import copy

        if count is None or count >= len(self.samples):
            return None
        other = copy.copy(self)
        other.samples, other._reference, other.seconds = self.samples[count:], None, 0.0
        if hasattr(other, "sizes"):
            other.sizes = {}
        return other

    def score(self, candidate: str | Path | Any) -> float:
        """Score of the candidate (an ONNX path, or an already loaded runner): 1.0 = FP32's outputs."""
        return self.score_folds(candidate, 1)[0][0]

    def score_folds(self, candidate: str | Path | Any, folds: int) -> tuple[list[float], list[float]]:
        """(score on all samples, scores on ``folds`` interleaved folds of them: samples i, i + folds, ...). The fold
        scores of two candidates are paired (same samples), so their differences measure how sure a ranking is."""
        start = time.perf_counter()
        try:
            if self._reference is None:
                runner = ort_runner(self.fp32, self.threads)
                try:
                    self._reference = self.collect(runner)
                finally:
                    runner.close()
            runner = ort_runner(candidate, self.threads) if isinstance(candidate, str | Path) else candidate
            try:
                collected = self.collect(runner)
            finally:
                if runner is not candidate:
                    runner.close()
            n = len(self.samples)
            parts = [list(range(k, n, folds)) for k in range(folds)] if folds > 1 else []
            scores = self.compare_subsets(self._reference, collected, [list(range(n)), *parts])
            return [float(scores[0])], [float(x) for x in scores[1:]]
        finally:
            self.seconds += time.perf_counter() - start

    @staticmethod
    def loss_pt(score: float) -> float:
        """The tuning loss in points: ``100 (1 - score)``."""
        return round(100.0 * (1.0 - score), 4)

    @abc.abstractmethod
    def collect(self, runner) -> Any:
        """What one model gives on the tuning samples (detections, outputs...)."""

    @abc.abstractmethod
    def compare_subsets(self, reference: Any, candidate: Any, subsets: list[list[int]]) -> list[float]:
        """The score of ``candidate``'s collected outputs against the reference's on each subset of sample indices."""


def accuracy_check(scorer: TuningScorer, max_loss_pt: float, transform: Callable[[Any], Feed]):
    """An :class:`~edgekit.backends.base.AccuracyCheck` that scores like ``scorer`` (label-free, 1.0 = FP32) with a
    budget of ``max_loss_pt``: NNCF's accuracy control then decides on the tuning samples and metric the search uses.
    Validation items are sample indices (NNCF validates subsets, down to single samples, to rank layers); each distinct
    subset computes its FP32 reference once. A subset without any FP32 detection to lose scores 1.0."""
    from edgekit.backends.base import AccuracyCheck
    from edgekit.errors import EdgekitError

    subsets: dict[tuple[int, ...], TuningScorer] = {}

    def validate(runner, items) -> float:
        key = tuple(int(i) for i in items)
        sub = subsets.setdefault(key, scorer.at(key))
        try:
            return sub.score(runner)
        except EdgekitError as exc:
            if "pseudo mAP is undefined" in str(exc):
                return 1.0
            raise

    return AccuracyCheck(f"{scorer.name} (tuning images, label-free)", max_loss_pt / 100.0, list(range(len(scorer.samples))),
                         lambda i: transform(scorer.samples[i]), validate)


class OutputCosineScorer(TuningScorer):
    """Mean over the tuning feeds of the smallest cosine between the candidate's and FP32's raw outputs."""

    name = "output_cosine"

    @property
    def description(self) -> str:
        return "output_cosine: mean over tuning samples of the smallest cosine between the candidate's and FP32's raw outputs"

    def __init__(self, fp32: str | Path, feeds: Sequence[Any], threads: int = 2, transform: Callable[[Any], Feed] | None = None) -> None:
        super().__init__(fp32, feeds, threads)
        self.transform = transform or (lambda x: x)

    def collect(self, runner) -> list[Feed]:
        return [runner.infer(self.transform(s)) for s in self.samples]

    def compare_subsets(self, reference: list[Feed], candidate: list[Feed], subsets: list[list[int]]) -> list[float]:
        cosines = np.array([output_cosine(r, c) for r, c in zip(reference, candidate)])
        return [float(cosines[idx].mean()) for idx in subsets]


class DetectionScorer(TuningScorer):
    """pseudo mAP50-95 of the candidate's detections against FP32's detections scoring >= ``conf`` (tuning images)."""

    name = "pseudo_map"

    def __init__(self, fp32: str | Path, images: Sequence[Path], detector, threads: int = 2, conf: float = DEFAULT_PSEUDO_CONF) -> None:
        super().__init__(fp32, images, threads)
        self.detector, self.conf = detector, conf
        self.sizes: dict[int, tuple[int, int]] = {}

    @property
    def description(self) -> str:
        return f"pseudo_map@{self.conf}: mAP50-95 against FP32's detections scoring >= {self.conf} as ground truth"

    def collect(self, runner) -> list[dict]:
        from edgekit.models.yolo.processing import to_coco

        d, dets = self.detector, []
        for image_id, path in enumerate(self.samples):
            feed, meta = d.preprocess(path)
            self.sizes[image_id] = meta.original_hw
            prediction = d.postprocess(runner.infer(feed), meta)
            dets.extend(to_coco(prediction, image_id, _Identity()))
        return dets

    def compare_subsets(self, reference: list[dict], candidate: list[dict], subsets: list[list[int]]) -> list[float]:
        truth = pseudo_ground_truth(reference, self.sizes, self.conf)
        if not truth["annotations"]:
            return [pseudo_map(reference, candidate, self.sizes, self.conf)] * len(subsets)  # raises, naming the threshold
        maps = map_by_subset(coco_from_dict(truth), candidate, {str(k): ids for k, ids in enumerate(subsets)})
        return [maps[str(k)]["mAP50-95"] for k in range(len(subsets))]


class _Identity:
    """Class index i as category id i (pseudo ground truth needs no dataset's category ids)."""

    def __getitem__(self, index: int) -> int:
        return int(index)


class TokenAgreementScorer(TuningScorer):
    """Teacher-forced token agreement of a decoder graph: each sample is ``(feed, first)``, one prefill of a prompt
    followed by FP32's own greedy continuation; the score is the share of positions ``first..`` where the candidate's
    top-1 token equals FP32's (1.0 = every next token the same). ``timing_feed``: what latency is measured on (a decode step
    with a filled cache, which is what generation repeats), when given."""

    name = "token_agreement"

    def __init__(self, fp32: str | Path, samples: Sequence[tuple[Feed, int]], threads: int = 2, logits: str = "logits",
                 timing_feed: Feed | None = None) -> None:
        super().__init__(fp32, samples, threads)
        self.logits, self.timing_feed = logits, timing_feed

    @property
    def description(self) -> str:
        return ("token_agreement: teacher-forced share of positions where the candidate's top-1 next token equals FP32's, "
                "over FP32's own greedy continuations of the tuning prompts")

    def transform(self, sample: tuple[Feed, int]) -> Feed:
        return sample[0]

    def collect(self, runner) -> list[np.ndarray]:
        return [np.asarray(runner.infer(feed)[self.logits][0, first:], np.float32) for feed, first in self.samples]

    def compare_subsets(self, reference: list[np.ndarray], candidate: list[np.ndarray], subsets: list[list[int]]) -> list[float]:
        same = [r.argmax(-1) == c.argmax(-1) for r, c in zip(reference, candidate)]
        return [float(np.concatenate([same[i] for i in idx]).mean()) if idx else float("nan") for idx in subsets]

