"""COCO detection accuracy of a model on any backend: run a runner over a dataset, then score apart from execution."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.evaluators.coco import CocoImages, CocoResult, coco_category_ids, coco_images, evaluate_coco
from edgekit.runners.base import Runner


def detect_dataset(
    runner: Runner,
    family,
    images_dir: str | Path,
    annotations: str | Path,
    max_images: int | None = None,
    conf: float = 0.001,
    iou: float = 0.65,
    max_det: int = 300,
    progress: Callable[[str, int], Iterator[int]] | None = None,
    label: str = "evaluate",
    allow_missing: bool = False,
    dataset: CocoImages | None = None,
) -> tuple[list[dict], list[int]]:
    """Run ``runner`` on every annotated image (the first ``max_images``) and return COCO-format detections and the
    image ids used. An annotated image missing from ``images_dir`` is an error unless ``allow_missing``."""
    from edgekit.models.yolo.processing import to_coco

    dataset = dataset or coco_images(annotations, images_dir, allow_missing)
    items = dataset.items[: max_images or None]
    category_ids = coco_category_ids(annotations)
    classes = getattr(family, "num_classes", None)
    if classes is not None and classes != len(category_ids):
        raise EdgekitError(f"the model predicts {classes} classes but the annotation file lists {len(category_ids)} categories "
                           "(class i is scored as the i-th category id)", annotations, "evaluate with the annotations of the dataset the model was trained on")
    steps = progress or (lambda _l, n: iter(range(n)))
    detections: list[dict] = []
    for i in steps(label, len(items)):
        image_id, path = items[i]
        feed, meta = family.preprocess(path)
        dets = family.postprocess(runner.infer(feed), meta, conf, iou, max_det)
        detections.extend(to_coco(dets, image_id, category_ids))
    return detections, [image_id for image_id, _ in items]


def evaluate_detector(runner: Runner, family, images_dir, annotations, **kwargs) -> CocoResult:
    """COCO mAP50-95 / mAP50 (and per-class AP) of ``runner`` on the dataset."""
    dataset = coco_images(annotations, images_dir, kwargs.pop("allow_missing", False))
    detections, image_ids = detect_dataset(runner, family, images_dir, annotations, dataset=dataset, **kwargs)
    result = evaluate_coco(detections, annotations, image_ids)
    result.annotated_images = dataset.annotated
    if note := dataset.note(len(image_ids)):
        result.notes.append(note)
    return result


def raw_outputs(runner: Runner, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Raw outputs for a few inputs (for fidelity comparison against the FP32 model)."""
    return [runner.infer(feed) for feed in feeds]
