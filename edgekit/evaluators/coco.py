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
from edgekit.optional import require

METRIC_NAMES = ("mAP50-95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")
_FIX = "set evaluation.dataset.annotations to a COCO instances JSON"


@dataclass
class CocoResult:
    """COCO metrics (0..1; -1 "no ground truth" buckets reported as 0.0) and AP50-95 per category name."""

    metrics: dict[str, float]
    per_class_ap: dict[str, float] = field(default_factory=dict)
    num_images: int = 0
    num_detections: int = 0


@lru_cache(maxsize=8)
def _load_coco(path: str, _mtime_ns: int, _size: int):
    COCO = require("pycocotools.coco", "coco", "COCO evaluation").COCO

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgekitError(f"not a readable COCO annotation file ({type(exc).__name__})", path, _FIX) from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise EdgekitError("not a COCO instances file (needs 'images', 'annotations' and 'categories' lists)", path, _FIX)
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        raise EdgekitError(f"malformed COCO annotation entry ({type(exc).__name__}: {exc})", path, _FIX) from exc
    return coco


def _coco(annotations: str | Path):
    path = Path(annotations)
    if not path.is_file():
        raise EdgekitError("annotation file not found", path, _FIX)
    stat = path.stat()
    return _load_coco(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def coco_category_ids(annotations: str | Path) -> list[int]:
    """Sorted category ids: class index ``i`` (YOLO rank order) is category ``ids[i]``."""
    return sorted(_coco(annotations).getCatIds())


def coco_class_names(annotations: str | Path) -> list[str]:
    """Category names in class-index order (see ``coco_category_ids``)."""
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


def _per_class_ap(coco, evaluator) -> dict[str, float]:
    """AP50-95 per category from COCOeval's precision array [iou, recall, class, area=all, maxDets=100]."""
    precision = evaluator.eval["precision"]
    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        if p.size:
            out[coco.cats[cat_id]["name"]] = float(np.mean(p))
    return out


def evaluate_coco(detections: list[dict], annotations: str | Path, image_ids: list[int] | None = None) -> CocoResult:
    """mAP50-95, mAP50, mAP75, size buckets and per-class AP50-95 of COCO-format ``detections``.

    ``detections``: ``{image_id, category_id, bbox: [x, y, w, h] in original pixels, score}``; only those on
    ``image_ids`` (default: every annotated image) are scored. The caller's dicts are not modified.
    """
    COCOeval = require("pycocotools.cocoeval", "coco", "COCO evaluation").COCOeval

    coco = _coco(annotations)
    known = set(coco.getImgIds())
    ids = sorted(set(image_ids)) if image_ids is not None else sorted(known)
    if unknown := set(ids) - known:
        raise EdgekitError(f"{len(unknown)} image id(s) are not in the annotation file (e.g. {min(unknown)})", annotations, "evaluate images of this dataset only")
    stray = {d["image_id"] for d in detections} - known
    if stray:
        raise EdgekitError(f"detections refer to image id(s) not in the annotation file (e.g. {min(stray)})", annotations, "use the image ids of this annotation file")
    wanted = set(ids)
    dets = [dict(d) for d in detections if d["image_id"] in wanted]  # loadRes adds keys to each dict
    if not dets:
        has_gt = {coco.anns[a]["category_id"] for a in coco.getAnnIds(imgIds=ids, iscrowd=False)} if ids else set()
        per_class = {coco.cats[c]["name"]: 0.0 for c in sorted(has_gt)}
        return CocoResult({k: 0.0 for k in METRIC_NAMES}, per_class, len(ids), 0)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(dets), "bbox")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {name: max(float(s), 0.0) for name, s in zip(METRIC_NAMES, evaluator.stats[:6])}
    return CocoResult(metrics, _per_class_ap(coco, evaluator), len(ids), len(dets))
