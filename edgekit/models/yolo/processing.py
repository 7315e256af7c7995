"""YOLO pre- and post-processing in numpy: letterbox, candidate selection, class-wise NMS, box mapping."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgekit.imaging import open_rgb

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into the network input: scale ``ratio`` then padding ``(left, top)``."""

    ratio: float
    pad: tuple[float, float]
    original_hw: tuple[int, int]


def read_image(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB, with a one-line error for unreadable files (``edgekit.imaging.open_rgb``)."""
    return open_rgb(path)


def letterbox(image: Image.Image, size: int | tuple[int, int], pad: int = PAD_VALUE) -> tuple[np.ndarray, Letterbox]:
    """Aspect-preserving bilinear resize into ``size`` (a side, or ``(height, width)``), centred, padded with ``pad``;
    returns HWC uint8."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    w, h = image.size
    ratio = min(out_h / h, out_w / w)
    new_w, new_h = int(round(w * ratio)), int(round(h * ratio))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    dw, dh = (out_w - new_w) / 2, (out_h - new_h) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    canvas = np.full((out_h, out_w, 3), pad, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = np.asarray(image, dtype=np.uint8)
    return canvas, Letterbox(ratio, (dw, dh), (h, w))


def preprocess(path: str | Path, size: int) -> tuple[np.ndarray, Letterbox]:
    """Image file -> NCHW float32 tensor in [0, 1] (RGB) and the letterbox that produced it."""
    canvas, box = letterbox(read_image(path), size)
    tensor = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    return tensor, box


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    out = np.empty_like(boxes)
    half = boxes[:, 2:4] / 2
    out[:, :2] = boxes[:, :2] - half
    out[:, 2:] = boxes[:, :2] + half
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int) -> np.ndarray:
    """Greedy NMS over xyxy boxes; returns kept indices by descending score (stops after ``max_keep``)."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    keep: list[int] = []
    while order.size and len(keep) < max_keep:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = (xx2 - xx1).clip(0) * (yy2 - yy1).clip(0)
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class Detections:
    """Boxes (xyxy, original image pixels), scores and class indices of one image."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def postprocess(
    prediction: np.ndarray,
    box: Letterbox,
    conf_threshold: float = 0.001,
    iou_threshold: float = 0.65,
    max_detections: int = 300,
    max_candidates: int = 30000,
    has_objectness: bool = True,
) -> Detections:
    """Decoded head output of one image -> multi-label candidates -> class-wise NMS -> boxes in the original image.

    ``prediction`` is (anchors, 5 + classes) for YOLOv5 (cx, cy, w, h, obj, probs) or (anchors, 4 + classes) for
    YOLOv8 (``has_objectness=False``).
    """
    pred = np.asarray(prediction, dtype=np.float32)
    if has_objectness:
        pred = pred[pred[:, 4] > conf_threshold]
        scores = pred[:, 5:] * pred[:, 4:5]
    else:
        scores = pred[:, 4:]
    rows, cls = np.nonzero(scores > conf_threshold)
    conf = scores[rows, cls]
    if conf.size > max_candidates:
        top = np.argsort(-conf, kind="stable")[:max_candidates]
        rows, cls, conf = rows[top], cls[top], conf[top]
    boxes = xywh_to_xyxy(pred[rows, :4])
    offset = cls[:, None].astype(np.float64) * 7680.0  # class-wise NMS in one pass: classes never overlap
    keep = nms(boxes.astype(np.float64) + offset, conf, iou_threshold, max_detections)  # float64: offsets reach 6e5 px
    boxes, conf, cls = boxes[keep], conf[keep], cls[keep]
    return Detections(scale_boxes(boxes, box), conf, cls)


def scale_boxes(boxes: np.ndarray, box: Letterbox) -> np.ndarray:
    """Map xyxy boxes from the letterboxed input back to the original image, clipped to its bounds."""
    out = boxes.copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - box.pad[0]) / box.ratio
    out[:, [1, 3]] = (out[:, [1, 3]] - box.pad[1]) / box.ratio
    h, w = box.original_hw
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def to_coco(dets: Detections, image_id: int, category_ids: list[int]) -> list[dict]:
    """Detections -> COCO result dicts (bbox as x, y, w, h)."""
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_ids[c]),
            "bbox": [round(float(x1), 3), round(float(y1), 3), round(float(x2 - x1), 3), round(float(y2 - y1), 3)],
            "score": round(float(s), 5),
        }
        for (x1, y1, x2, y2), s, c in zip(dets.boxes, dets.scores, dets.classes)
    ]
