"""COCO bbox evaluation (pycocotools) on any COCO-format dataset, with per-class AP."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

METRIC_NAMES = ("mAP50-95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")


@dataclass
class CocoResult:
    metrics: dict[str, float]
    per_class_ap: dict[str, float] = field(default_factory=dict)
    num_images: int = 0
    num_detections: int = 0


@lru_cache(maxsize=8)
def _load_coco(path: str):
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(path)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise EdgekitError("not a readable COCO annotation file", path, "pass a COCO instances JSON") from exc


def _coco(annotations: str | Path):
    path = Path(annotations)
    if not path.is_file():
        raise EdgekitError("annotation file not found", path, "set evaluation.dataset.annotations to a COCO instances JSON")
    return _load_coco(str(path.resolve()))


def coco_category_ids(annotations: str | Path) -> list[int]:
    """Sorted category ids: class index ``i`` (YOLO rank order) is category ``ids[i]``."""
    return sorted(_coco(annotations).getCatIds())


def coco_class_names(annotations: str | Path) -> list[str]:
    coco = _coco(annotations)
    return [coco.cats[c]["name"] for c in coco_category_ids(annotations)]


def load_coco_images(annotations: str | Path, images_dir: str | Path) -> list[tuple[int, Path]]:
    """(image id, file) for every annotated image present in ``images_dir``, sorted by id."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise EdgekitError("image folder not found", images_dir, "set evaluation.dataset.images to the dataset's image folder")
    coco = _coco(annotations)
    items = [(i, images_dir / coco.imgs[i]["file_name"]) for i in sorted(coco.getImgIds())]
    items = [(i, p) for i, p in items if p.is_file()]
    if not items:
        raise EdgekitError("no annotated image of the annotation file is in this folder", images_dir, "point images and annotations at the same dataset")
    return items


def evaluate_coco(detections: list[dict], annotations: str | Path, image_ids: list[int] | None = None) -> CocoResult:
    """mAP50-95, mAP50, mAP75, size buckets and per-class AP50-95 of COCO-format ``detections``."""
    from pycocotools.cocoeval import COCOeval

    coco = _coco(annotations)
    ids = sorted(image_ids) if image_ids is not None else sorted(coco.getImgIds())
    if not detections:
        return CocoResult({k: 0.0 for k in METRIC_NAMES}, {}, len(ids), 0)
    with contextlib.redirect_stdout(io.StringIO()):
        results = coco.loadRes(detections)
        evaluator = COCOeval(coco, results, "bbox")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(float(s), 0.0) for s in evaluator.stats]
    metrics = dict(zip(METRIC_NAMES, (stats[0], stats[1], stats[2], stats[3], stats[4], stats[5])))
    precision = evaluator.eval["precision"]  # [iou, recall, class, area, max_dets]
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        if p.size:
            per_class[coco.cats[cat_id]["name"]] = float(np.mean(p))
    return CocoResult(metrics, per_class, len(ids), len(detections))
