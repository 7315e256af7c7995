"""Label-free tuning metrics: a candidate (e.g. an INT8 model) scored against the FP32 model's own outputs.

Settings chosen by looking at accuracy (calibration method and percentile, per-tensor ranges, which layers stay float)
must be chosen on a *tuning* set that is disjoint from the evaluation set, or the reported accuracy is optimistic.
The tuning set has no labels by default (the calibration images), so the candidate is scored against FP32:

* detectors: :func:`pseudo_map`, COCO mAP50-95 of the candidate's detections against FP32's detections above a
  confidence threshold taken as pseudo ground truth (1.0 for FP32 itself); :func:`output_cosine`,
  :func:`score_cosine` and :func:`box_agreement` are cheaper alternatives (``benchmarks/proxy_correlation.py``
  measures how well each predicts the real mAP drop on held-out labelled images);
* encoders: :func:`embedding_cosine` (mean row cosine) and :func:`topk_agreement` (top-1 agreement and top-k overlap
  of the rankings against a gallery, via :mod:`edgekit.evaluators.zero_shot`).

:class:`TuningSet` / :func:`check_disjoint` refuse a tuning set that shares an image (by sha256 of the file bytes,
so a renamed copy is caught) with the evaluation set.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.artifacts import sha256_file
from edgekit.errors import EdgekitError
from edgekit.evaluators.zero_shot import prediction_agreement, topk_overlap
from edgekit.optional import require

# FP32 detections at or above this score are the pseudo ground truth of pseudo_map. benchmarks/proxy_correlation.py
# measured 0.1, 0.25 and 0.5 on YOLOv5n: 0.5 ranked 12 INT8 candidates best on the calibration->evaluation split
# (Spearman 0.83, regret 0.10 pt; 0.25: 0.74, 1.18 pt).
DEFAULT_PSEUDO_CONF = 0.5
_STATS = ("mAP50-95", "mAP50")


# --------------------------------------------------------------------------------------------------------------------
# Tuning set vs evaluation set
# --------------------------------------------------------------------------------------------------------------------


def file_digests(files: Iterable[str | Path]) -> dict[str, Path]:
    """sha256 of each file's bytes -> the first file with those bytes."""
    out: dict[str, Path] = {}
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise EdgekitError("file not found", path, "list existing image files")
        out.setdefault(sha256_file(path), path)
    return out


def check_disjoint(tuning_files: Iterable[str | Path], evaluation_files: Iterable[str | Path], role: str = "tuning") -> None:
    """Raise :class:`EdgekitError` when a tuning file has the same bytes (sha256) as an evaluation file.

    Content, not names, is compared: a copy of an evaluation image under another name or folder is refused too.
    """
    tuning = file_digests(tuning_files)
    evaluation = file_digests(evaluation_files)
    common = sorted(set(tuning) & set(evaluation), key=lambda d: str(tuning[d]))
    if common:
        first = common[0]
        raise EdgekitError(
            f"{len(common)} {role} image(s) are also evaluation images (same sha256; e.g. {tuning[first].name} = {evaluation[first]}): "
            "settings chosen on them would make the reported accuracy optimistic",
            tuning[first],
            "calibrate and tune on images disjoint from evaluation.dataset",
        )


@dataclass(frozen=True)
class TuningSet:
    """Which images choose settings (``tuning``, label-free) and which measure them (``evaluation``).

    Built through :meth:`create`, which checks that no tuning image is an evaluation image (by content).
    """

    tuning: tuple[Path, ...]
    evaluation: tuple[Path, ...]

    @classmethod
    def create(cls, tuning: Iterable[str | Path], evaluation: Iterable[str | Path]) -> TuningSet:
        tuning_files, evaluation_files = tuple(Path(p) for p in tuning), tuple(Path(p) for p in evaluation)
        if not tuning_files:
            raise EdgekitError("the tuning set is empty", fix="tune on the calibration images (or a folder disjoint from evaluation.dataset)")
        check_disjoint(tuning_files, evaluation_files)
        return cls(tuning_files, evaluation_files)

    def to_dict(self) -> dict:
        """For a report: how many images each role has and where they live (folders)."""
        def folders(files: tuple[Path, ...]) -> list[str]:
            return sorted({str(p.parent) for p in files})

        return {"tuning_images": len(self.tuning), "tuning_folders": folders(self.tuning), "evaluation_images": len(self.evaluation),
                "evaluation_folders": folders(self.evaluation), "disjoint_by": "sha256 of file bytes"}


# --------------------------------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------------------------------


def pseudo_ground_truth(reference_detections: Iterable[Mapping], image_sizes: Mapping[int, tuple[int, int]], conf: float = DEFAULT_PSEUDO_CONF,
                        categories: Iterable[int] = ()) -> dict:
    """A COCO instances dict whose boxes are the reference detections scoring at least ``conf``.

    ``image_sizes``: image id -> (height, width) of every image scored (images without a pseudo box still count:
    a candidate's boxes there are false positives). Categories: those given plus every one used by the boxes.
    """
    images = [{"id": int(i), "height": int(h), "width": int(w), "file_name": str(i)} for i, (h, w) in sorted(image_sizes.items())]
    known = set(image_sizes)
    annotations, cats = [], {int(c) for c in categories}
    for d in reference_detections:
        if d["score"] < conf:
            continue
        if d["image_id"] not in known:
            raise ValueError(f"reference detection on image {d['image_id']}, which has no size in image_sizes")
        x, y, w, h = (float(v) for v in d["bbox"])
        annotations.append({"id": len(annotations) + 1, "image_id": int(d["image_id"]), "category_id": int(d["category_id"]),
                            "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        cats.add(int(d["category_id"]))
    return {"images": images, "annotations": annotations, "categories": [{"id": c, "name": str(c)} for c in sorted(cats)]}


def coco_from_dict(data: dict):
    """A pycocotools ``COCO`` object over a copy of an in-memory instances dict (``evaluators.coco.coco_from_dict``)."""
    from edgekit.evaluators.coco import coco_from_dict as over

    return over(copy.deepcopy(data))


def map_by_subset(ground_truth, detections: Sequence[Mapping], subsets: Mapping[str, Sequence[int]]) -> dict[str, dict[str, float]]:
    """COCO bbox mAP50-95 and mAP50 of ``detections`` against ``ground_truth`` (a pycocotools ``COCO``) on each
    subset of image ids, from one ``COCOeval.evaluate`` over their union (matching is per image, so only the
    accumulation differs between subsets: equal to evaluating each subset alone, at a fraction of the time)."""
    COCOeval = require("pycocotools.cocoeval", "coco", "COCO evaluation").COCOeval
    wanted = sorted({int(i) for ids in subsets.values() for i in ids})
    zeros = {k: 0.0 for k in _STATS}
    keep = set(wanted)
    dets = [dict(d) for d in detections if d["image_id"] in keep]  # loadRes adds keys to each dict
    if not dets or not ground_truth.getAnnIds(imgIds=wanted):
        return {name: dict(zeros) for name in subsets}
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(dets), "bbox")
        evaluator.params.imgIds = wanted
        evaluator.evaluate()
        ids = list(evaluator.params.imgIds)  # sorted, unique: evalImgs is [category][area][image] over these
        index = {i: n for n, i in enumerate(ids)}
        n_img, n_area = len(ids), len(evaluator.params.areaRng)
        for name, subset in subsets.items():
            chosen = sorted({int(i) for i in subset})
            if not ground_truth.getAnnIds(imgIds=chosen):
                out[name] = dict(zeros)
                continue
            part = copy.copy(evaluator)
            part.params, part._paramsEval = copy.deepcopy(evaluator.params), copy.deepcopy(evaluator._paramsEval)
            part.params.imgIds = part._paramsEval.imgIds = chosen
            pos = [index[i] for i in chosen]
            part.evalImgs = [evaluator.evalImgs[(k * n_area + a) * n_img + p]
                             for k in range(len(evaluator.params.catIds)) for a in range(n_area) for p in pos]
            part.accumulate()
            part.summarize()
            out[name] = {k: max(float(s), 0.0) for k, s in zip(_STATS, part.stats[:2])}
    return out


def pseudo_map(reference_detections: Sequence[Mapping], candidate_detections: Sequence[Mapping], image_sizes: Mapping[int, tuple[int, int]],
               conf: float = DEFAULT_PSEUDO_CONF, metric: str = "mAP50-95", categories: Iterable[int] = ()) -> float:
    """COCO ``metric`` (mAP50-95 or mAP50) of the candidate against the reference's detections scoring at least
    ``conf`` taken as ground truth, on the images of ``image_sizes`` (id -> (height, width)).

    Detections are COCO result dicts (``image_id, category_id, bbox: [x, y, w, h], score``), e.g. from
    :func:`edgekit.models.yolo.processing.to_coco`; the candidate's should be all of them (conf 0.001, as for
    evaluation). The reference scored against itself gives 1.0: its boxes above ``conf`` rank first and match
    themselves exactly.
    """
    if metric not in _STATS:
        raise ValueError(f"metric must be one of {_STATS} (got {metric!r})")
    truth = pseudo_ground_truth(reference_detections, image_sizes, conf, categories)
    if not truth["annotations"]:
        raise EdgekitError(f"no reference detection scores at least {conf} on the {len(image_sizes)} tuning images: pseudo mAP is undefined",
                           fix="lower the pseudo ground-truth threshold, or tune on more images")
    return map_by_subset(coco_from_dict(truth), candidate_detections, {"all": list(image_sizes)})["all"][metric]


def flat_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two flattened arrays in float64; two all-zero arrays 1.0, a zero and a non-zero one 0.0 (as
    :func:`edgekit.evaluators.fidelity.compare_outputs`)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))


def output_cosine(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> float:
    """Smallest cosine over the outputs of one sample (raw outputs, flattened): the ``cosine`` of
    :func:`edgekit.evaluators.fidelity.compare_outputs`, without its error statistics (this runs per tuning image)."""
    missing = [name for name in reference if name not in candidate]
    if missing:
        raise EdgekitError(f"candidate outputs lack {missing} (has {sorted(candidate)})", fix="compare models with the same output names")
    for name, ref in reference.items():
        if np.shape(ref) != np.shape(candidate[name]):
            raise EdgekitError(f"output {name!r} has shape {np.shape(candidate[name])} in the candidate but {np.shape(ref)} in the reference",
                               fix="compare models with the same outputs")
    return min(flat_cosine(ref, candidate[name]) for name, ref in reference.items())


def class_scores(prediction: np.ndarray, has_objectness: bool = True) -> np.ndarray:
    """Per-anchor class confidences of one image's decoded head output (anchors, 5 + classes): objectness x class
    probability for YOLOv5 (``has_objectness``), the class scores of (anchors, 4 + classes) for YOLOv8."""
    pred = np.asarray(prediction, dtype=np.float32)
    if pred.ndim == 3:
        pred = pred[0]
    return pred[:, 5:] * pred[:, 4:5] if has_objectness else pred[:, 4:]


def score_cosine(reference_prediction: np.ndarray, candidate_prediction: np.ndarray, has_objectness: bool = True) -> float:
    """Cosine of the per-anchor class confidences (:func:`class_scores`) of one image: insensitive to the box
    coordinates in pixels, which dominate the raw output's cosine."""
    return flat_cosine(class_scores(reference_prediction, has_objectness), class_scores(candidate_prediction, has_objectness))


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xywh box against (N, 4) xywh boxes."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y2 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter + 1e-9)


def box_agreement(reference_detections: Sequence[Mapping], candidate_detections: Sequence[Mapping], conf: float = DEFAULT_PSEUDO_CONF) -> float:
    """Score-weighted IoU agreement of two detection sets (1.0 when equal).

    Both sides' detections scoring at least ``conf`` are matched greedily within a class and image (reference by
    descending score, each to its highest-IoU unmatched candidate, IoU > 0); the result is
    ``sum(ref_score * IoU) / (sum(ref_score) + sum(score of unmatched candidates))``: a missed box costs its
    reference score, a spurious one its own score, a shifted one the IoU it lost.
    """
    def grouped(dets: Iterable[Mapping]) -> dict[tuple[int, int], list[Mapping]]:
        out: dict[tuple[int, int], list[Mapping]] = {}
        for d in dets:
            if d["score"] >= conf:
                out.setdefault((int(d["image_id"]), int(d["category_id"])), []).append(d)
        return out

    ref, cand = grouped(reference_detections), grouped(candidate_detections)
    gained, total = 0.0, 0.0
    for key in set(ref) | set(cand):
        rs = sorted(ref.get(key, []), key=lambda d: -d["score"])
        cs = cand.get(key, [])
        cboxes = np.asarray([d["bbox"] for d in cs], dtype=np.float64).reshape(-1, 4)
        free = np.ones(len(cs), dtype=bool)
        for r in rs:
            total += r["score"]
            if not free.any():
                continue
            iou = np.where(free, _iou(np.asarray(r["bbox"], dtype=np.float64), cboxes), -1.0)
            j = int(iou.argmax())
            if iou[j] > 0:
                free[j] = False
                gained += r["score"] * iou[j]
        total += sum(c["score"] for c, f in zip(cs, free) if f)
    return gained / total if total > 0 else 1.0


# --------------------------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------------------------


def _pair(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or not a.shape[0]:
        raise ValueError(f"need two non-empty (N, D) embedding arrays of equal shape (got {a.shape} and {b.shape})")
    return a, b


def embedding_cosine(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Row-wise cosine of candidate vs reference embeddings (N, D): ``mean`` and ``min``."""
    a, b = _pair(reference, candidate)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(denom > 0, (a * b).sum(axis=1) / np.maximum(denom, 1e-300), 1.0)
    return {"mean": float(cos.mean()), "min": float(cos.min())}


def topk_agreement(reference: np.ndarray, candidate: np.ndarray, gallery: np.ndarray | None = None, k: int = 5) -> dict[str, float]:
    """How far the candidate's embeddings rank a gallery as the reference's do.

    ``gallery`` (G, D): e.g. FP32 class embeddings (zero-shot) or FP32 document embeddings (retrieval); default: the
    reference embeddings themselves, each row's own entry masked (nearest-neighbour agreement). Returns ``top1``
    (:func:`prediction_agreement`) and ``top{k}`` (:func:`topk_overlap`).
    """
    a, b = _pair(reference, candidate)
    g = a if gallery is None else np.asarray(gallery, dtype=np.float64)
    logits_a, logits_b = a @ g.T, b @ g.T
    if gallery is None:
        np.fill_diagonal(logits_a, -np.inf)
        np.fill_diagonal(logits_b, -np.inf)
    k = min(k, logits_a.shape[1] - (1 if gallery is None else 0))
    return {"top1": prediction_agreement(logits_a, logits_b), f"top{k}": topk_overlap(logits_a, logits_b, k)}
