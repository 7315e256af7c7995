"""COCO bbox evaluation (pycocotools) on any COCO-format dataset, with per-class AP."""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

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
    annotated_images: int = 0  # images listed in the annotation file (``num_images`` of them were evaluated)
    notes: list[str] = field(default_factory=list)
    # per-image match records (edgekit.evaluators.bootstrap.CocoRecords) for bootstrap intervals; None without detections
    records: Any = field(default=None, repr=False, compare=False)


@lru_cache(maxsize=8)
def _load_coco(path: str, _mtime_ns: int, _size: int):
    require("pycocotools.coco", "coco", "COCO evaluation")  # a missing extra is said before the file is read

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgekitError(f"not a readable COCO annotation file ({type(exc).__name__})", path, _FIX) from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise EdgekitError("not a COCO instances file (needs 'images', 'annotations' and 'categories' lists)", path, _FIX)
    _validate(data, path)
    try:
        return coco_from_dict(data)
    except (KeyError, TypeError) as exc:
        raise EdgekitError(f"malformed COCO annotation entry ({type(exc).__name__}: {exc})", path, _FIX) from exc


def coco_from_dict(data: dict):
    """A pycocotools ``COCO`` object over an in-memory instances dict (kept, not copied; no printing): an annotation
    file's contents, or the pseudo ground truth of label-free tuning (``edgekit.tuning.proxy``)."""
    coco = require("pycocotools.coco", "coco", "COCO evaluation").COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _validate(data: dict, path: str) -> None:
    """Structure pycocotools assumes but never checks: a bad file fails here in one line, not as a traceback later."""
    if not data["categories"]:
        raise EdgekitError("no categories (the 'categories' list is empty)", path, "list the dataset's categories ({id, name}) in the file")
    for c in data["categories"]:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise EdgekitError(f"a category without an integer 'id' and a 'name' ({str(c)[:80]})", path, _FIX)
    for im in data["images"]:
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise EdgekitError(f"an image entry without an integer 'id' and a 'file_name' ({str(im)[:80]})", path, _FIX)
    if not data["annotations"]:
        raise EdgekitError("no ground truth (the 'annotations' list is empty): every score would be 0", path, _FIX)
    categories, images = {c["id"] for c in data["categories"]}, {im["id"] for im in data["images"]}
    unknown_cat, unknown_img = [], []
    for a in data["annotations"]:
        if not isinstance(a, dict) or not isinstance(a.get("image_id"), int) or not isinstance(a.get("category_id"), int):
            raise EdgekitError(f"an annotation without an integer 'image_id' and 'category_id' ({str(a)[:80]})", path, _FIX)
        box = a.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            what = "no 'bbox'" if box is None else f"bbox {str(box)[:60]} is not 4 finite numbers"
            raise EdgekitError(f"annotation {a.get('id', '?')} has {what} (COCO bbox: [x, y, width, height])", path, "give every annotation a bbox")
        if box[2] < 0 or box[3] < 0:
            raise EdgekitError(f"annotation {a.get('id', '?')} has a negative bbox width or height ({box})", path, "COCO bbox is [x, y, width, height]")
        if a["category_id"] not in categories:
            unknown_cat.append(a["category_id"])
        if a["image_id"] not in images:
            unknown_img.append(a["image_id"])
    if len(unknown_cat) == len(data["annotations"]):
        raise EdgekitError(f"no ground truth: none of the {len(unknown_cat)} annotations has a category id listed in 'categories' "
                           f"(e.g. {min(unknown_cat)})", path, "use the category ids of the file's 'categories'")
    if unknown_cat:
        raise EdgekitError(f"{len(unknown_cat)} annotations use category ids not in 'categories' (e.g. {min(unknown_cat)}); they would be ignored",
                           path, "list those categories, or remove their annotations")
    if unknown_img:
        raise EdgekitError(f"{len(unknown_img)} annotations refer to image ids not in 'images' (e.g. {min(unknown_img)})", path,
                           "list those images, or remove their annotations")


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


@dataclass
class CocoImages:
    """The annotation file's images found in a folder: ``items`` (image id, file) sorted by id, and the file names
    listed in the annotation file but missing from the folder."""

    items: list[tuple[int, Path]]
    missing: list[str]
    folder: Path

    @property
    def annotated(self) -> int:
        return len(self.items) + len(self.missing)

    def note(self, evaluated: int) -> str | None:
        """"evaluated 150 of 158 annotated images (8 missing from FOLDER)", or None when none is missing."""
        if not self.missing:
            return None
        return f"evaluated {evaluated} of {self.annotated} annotated images ({len(self.missing)} missing from {self.folder})"


def coco_images(annotations: str | Path, images_dir: str | Path, allow_missing: bool = False) -> CocoImages:
    """The annotated images present in ``images_dir``; a missing one is an error unless ``allow_missing``."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise EdgekitError("image folder not found", images_dir, "set evaluation.dataset.images to the dataset's image folder")
    coco = _coco(annotations)
    items, missing = [], []
    for i in sorted(coco.getImgIds()):
        p = images_dir / coco.imgs[i]["file_name"]
        if p.is_file():
            items.append((i, p))
        else:
            missing.append(coco.imgs[i]["file_name"])
    if not items:
        raise EdgekitError(f"none of the {len(missing)} images of {annotations} is in this folder", images_dir, "point images and annotations at the same dataset")
    if missing and not allow_missing:
        raise EdgekitError(
            f"{len(missing)} of {len(items) + len(missing)} images of {annotations} are missing from this folder (e.g. {missing[0]})", images_dir,
            "put them there, or set evaluation.dataset.allow_missing_images: true to score the images found",
        )
    return CocoImages(items, missing, images_dir)


def load_coco_images(annotations: str | Path, images_dir: str | Path, allow_missing: bool = True) -> list[tuple[int, Path]]:
    """(image id, file) for every annotated image present in ``images_dir``, sorted by id (see ``coco_images``)."""
    return coco_images(annotations, images_dir, allow_missing).items


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


def require_ground_truth(annotations: str | Path, image_ids: list[int]) -> None:
    """Refuse scoring images without one box of a listed category: every metric would be 0 and a gate would hold."""
    coco = _coco(annotations)
    if image_ids and not coco.getAnnIds(imgIds=list(image_ids), catIds=coco.getCatIds()):
        raise EdgekitError(f"no ground truth box on the {len(image_ids)} evaluated images: every score would be 0", annotations,
                           "evaluate images that have annotations (or raise evaluation.max_images)")


def evaluate_coco(detections: list[dict], annotations: str | Path, image_ids: list[int] | None = None, keep_records: bool = True) -> CocoResult:
    """mAP50-95, mAP50, mAP75, size buckets and per-class AP50-95 of COCO-format ``detections``.

    ``detections``: ``{image_id, category_id, bbox: [x, y, w, h] in original pixels, score}``; only those on
    ``image_ids`` (default: every annotated image) are scored. The caller's dicts are not modified. With
    ``keep_records`` the result carries the per-image match records (``CocoResult.records``) that re-accumulate
    mAP50-95 / mAP50 / mAP75 on bootstrap resamples of the images (``edgekit.evaluators.bootstrap``).
    """
    COCOeval = require("pycocotools.cocoeval", "coco", "COCO evaluation").COCOeval
    from edgekit.evaluators.bootstrap import CocoRecords

    coco = _coco(annotations)
    known = set(coco.getImgIds())
    ids = sorted(set(image_ids)) if image_ids is not None else sorted(known)
    if unknown := set(ids) - known:
        raise EdgekitError(f"{len(unknown)} image id(s) are not in the annotation file (e.g. {min(unknown)})", annotations, "evaluate images of this dataset only")
    stray = {d["image_id"] for d in detections} - known
    if stray:
        raise EdgekitError(f"detections refer to image id(s) not in the annotation file (e.g. {min(stray)})", annotations, "use the image ids of this annotation file")
    wanted = set(ids)
    require_ground_truth(annotations, ids)
    dets = [dict(d) for d in detections if d["image_id"] in wanted]  # loadRes adds keys to each dict
    if not dets:
        has_gt = {coco.anns[a]["category_id"] for a in coco.getAnnIds(imgIds=ids, iscrowd=False)} if ids else set()
        per_class = {coco.cats[c]["name"]: 0.0 for c in sorted(has_gt)}
        return CocoResult({k: 0.0 for k in METRIC_NAMES}, per_class, len(ids), 0)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(dets), "bbox")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        records = CocoRecords(evaluator) if keep_records else None
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {name: max(float(s), 0.0) for name, s in zip(METRIC_NAMES, evaluator.stats[:6])}
    return CocoResult(metrics, _per_class_ap(coco, evaluator), len(ids), len(dets), records=records)
