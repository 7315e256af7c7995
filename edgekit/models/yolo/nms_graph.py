"""Class-wise NMS appended to an exported YOLO ONNX graph, for deployment without host-side post-processing.

``append_nms`` replaces the raw head output (``output0``) by one output ``detections`` of shape (N, 7), float32:

    batch_index, x1, y1, x2, y2, score, class_id

sorted by batch index, then by descending score. The boxes are in **network-input pixels**: the letterbox is
*not* undone, because the graph does not know how each image was fitted. Map them back on the host with
:func:`to_detections` (or ``processing.scale_boxes``): subtract the pad, divide by the ratio, clip to the image.

The result is the same as edgekit's numpy :func:`~edgekit.models.yolo.processing.postprocess` on every image:

* scores are ``objectness * class probability`` (YOLOv5) or the class probability (YOLOv8); every class above
  ``conf_threshold`` is a candidate for its box (multi-label), as in numpy;
* ONNX ``NonMaxSuppression`` runs per class, which is exactly numpy's class-offset NMS; a box is suppressed
  when its IoU with a better-scoring box of its class is above ``iou_threshold``;
* ``max_detections`` is applied **per image** over all classes (the best ``max_detections`` scores), as in numpy.
  The only numpy rule not reproduced is its cap of 30,000 candidates before NMS, which no longer matters after
  a realistic ``conf_threshold`` (it can only drop the lowest-scoring candidates).

Only standard ``ai.onnx`` operators (all defined by opset 13) are added (NonMaxSuppression, TopK, GatherND, CumSum,
Compress, ...); the graph's own opset is kept and must be >= 13 (opset 17, the export default, is fine).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import EdgekitError
from edgekit.models.yolo.processing import Detections, Letterbox, scale_boxes

MIN_OPSET = 13  # ReduceSum / Squeeze / Unsqueeze take their axes as inputs from opset 13
OUTPUT_NAME = "detections"
_PREFIX = "edgekit_nms/"
_INT64_MAX = np.iinfo(np.int64).max


class _Builder:
    """Appends prefixed nodes and initializers to a graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph

    def const(self, name: str, value, dtype) -> str:
        full = _PREFIX + name
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), full))
        return full

    def ints(self, name: str, *values: int) -> str:
        return self.const(name, list(values), np.int64)

    def op(self, op_type: str, inputs: list[str], name: str, outputs: int = 1, **attrs) -> str | list[str]:
        names = [_PREFIX + name] if outputs == 1 else [f"{_PREFIX}{name}_{i}" for i in range(outputs)]
        self.graph.node.append(helper.make_node(op_type, inputs, names, name=_PREFIX + name, **attrs))
        return names[0] if outputs == 1 else names


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def append_nms(
    model: onnx.ModelProto,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
    anchor_based: bool = True,
    *,
    output_name: str = "output0",
) -> onnx.ModelProto:
    """Return a copy of the exported YOLO ``model`` whose only output is ``detections`` (N, 7), see the module doc.

    ``output_name`` is (batch, anchors, 5 + nc) for YOLOv5 (cx, cy, w, h in pixels, objectness, class
    probabilities; ``anchor_based=True``) or (batch, 4 + nc, anchors) for YOLOv8 (``anchor_based=False``).
    """
    if not 0.0 <= conf_threshold < 1.0 or not 0.0 <= iou_threshold <= 1.0 or max_detections < 1:
        raise EdgekitError(
            f"invalid NMS settings: conf {conf_threshold}, iou {iou_threshold}, max_detections {max_detections}",
            fix="use 0 <= conf < 1, 0 <= iou <= 1 and max_detections >= 1",
        )
    outputs = [o.name for o in model.graph.output]
    if OUTPUT_NAME in outputs:
        raise EdgekitError(f"the model already has an output '{OUTPUT_NAME}'", fix="append NMS to the raw exported model only once")
    if output_name not in outputs:
        raise EdgekitError(f"the model has no output '{output_name}' (outputs: {outputs})", fix="pass the raw YOLO head output's name")
    opset = _opset(model)
    if opset < MIN_OPSET:
        raise EdgekitError(f"NMS in the graph needs ONNX opset >= {MIN_OPSET}, the model has {opset}", fix="export with opset 17")
    elem = next(o for o in model.graph.output if o.name == output_name).type.tensor_type.elem_type

    out = onnx.ModelProto()
    out.CopyFrom(model)
    b = _Builder(out.graph)
    pred = output_name
    if elem != TensorProto.FLOAT:  # e.g. an FP16 model: NMS and the output are float32
        pred = b.op("Cast", [pred], "pred_f32", to=TensorProto.FLOAT)
    # Layout (batch, anchors, channels) for both families.
    if not anchor_based:
        pred = b.op("Transpose", [pred], "pred_bac", perm=[0, 2, 1])
    axis2 = b.ints("axis2", 2)
    xy = b.op("Slice", [pred, b.ints("i0", 0), b.ints("i2", 2), axis2], "xy")
    wh = b.op("Slice", [pred, b.ints("i2b", 2), b.ints("i4", 4), axis2], "wh")
    half = b.op("Mul", [wh, b.const("half", 0.5, np.float32)], "half_wh")
    boxes = b.op("Concat", [b.op("Sub", [xy, half], "x1y1"), b.op("Add", [xy, half], "x2y2")], "boxes_xyxy", axis=2)
    if anchor_based:
        obj = b.op("Slice", [pred, b.ints("i4b", 4), b.ints("i5", 5), axis2], "objectness")
        cls = b.op("Slice", [pred, b.ints("i5b", 5), b.ints("end", _INT64_MAX), axis2], "class_probs")
        scores = b.op("Mul", [cls, obj], "scores_bac")
    else:
        scores = b.op("Slice", [pred, b.ints("i4c", 4), b.ints("end", _INT64_MAX), axis2], "scores_bac")
    scores = b.op("Transpose", [scores], "scores_bca", perm=[0, 2, 1])  # (batch, classes, anchors)

    # Per-class NMS: (K, 3) = batch, class, anchor. At most max_detections per class can survive the per-image cap.
    selected = b.op(
        "NonMaxSuppression",
        [boxes, scores, b.ints("max_per_class", max_detections), b.const("iou", [iou_threshold], np.float32),
         b.const("conf", [conf_threshold], np.float32)],
        "selected",
        center_point_box=0,
    )
    axis1 = b.ints("axis1", 1)
    batch = b.op("Gather", [selected, b.const("col0", 0, np.int64)], "batch", axis=1)  # scalar index -> (K,)
    cls_id = b.op("Gather", [selected, b.const("col1", 1, np.int64)], "class", axis=1)
    picked_boxes = b.op("GatherND", [boxes, b.op("Gather", [selected, b.ints("cols02", 0, 2)], "batch_anchor", axis=1)], "picked_boxes")
    picked_scores = b.op("GatherND", [scores, selected], "picked_scores")  # (K,)

    # Order by (batch, -score): key = batch * 2 + (1 - score) in float64 (scores are in [0, 1]), ascending.
    num = b.op("Shape", [picked_scores], "num")  # (1,)
    batch_f = b.op("Cast", [batch], "batch_f64", to=TensorProto.DOUBLE)
    score_f = b.op("Cast", [picked_scores], "score_f64", to=TensorProto.DOUBLE)
    key = b.op("Add", [b.op("Mul", [batch_f, b.const("two", 2.0, np.float64)], "batch_x2"),
                       b.op("Sub", [b.const("one", 1.0, np.float64), score_f], "one_minus_score")], "sort_key")
    _, order = b.op("TopK", [key, num], "sort", outputs=2, axis=0, largest=0, sorted=1)
    batch = b.op("Gather", [batch, order], "batch_sorted", axis=0)
    cls_id = b.op("Gather", [cls_id, order], "class_sorted", axis=0)
    picked_boxes = b.op("Gather", [picked_boxes, order], "boxes_sorted", axis=0)
    picked_scores = b.op("Gather", [picked_scores, order], "scores_sorted", axis=0)

    # Rank of each detection within its image = position - index of the image's first detection; keep rank < max.
    zero, one = b.const("zero", 0, np.int64), b.const("one_i64", 1, np.int64)  # scalars, as Range needs
    position = b.op("Range", [zero, b.op("Squeeze", [num, b.ints("axis0", 0)], "num_scalar"), one], "position")
    num_batch = b.op("Gather", [b.op("Shape", [boxes], "boxes_shape"), zero], "num_batch", axis=0)  # scalar
    images = b.op("Range", [zero, num_batch, one], "images")
    one_hot = b.op("Equal", [b.op("Unsqueeze", [batch, axis1], "batch_col"), b.op("Unsqueeze", [images, b.ints("axis0b", 0)], "images_row")], "one_hot")
    per_image = b.op("ReduceSum", [b.op("Cast", [one_hot], "one_hot_i64", to=TensorProto.INT64), b.ints("axis0c", 0)], "per_image", keepdims=0)
    first = b.op("Sub", [b.op("CumSum", [per_image, zero], "cumsum"), per_image], "first_of_image")
    rank = b.op("Sub", [position, b.op("Gather", [first, batch], "first_of_det", axis=0)], "rank")
    keep = b.op("Less", [rank, b.const("max_det", max_detections, np.int64)], "keep")

    columns = [
        b.op("Unsqueeze", [b.op("Cast", [batch], "batch_f32", to=TensorProto.FLOAT), b.ints("axis1b", 1)], "batch_out"),
        picked_boxes,
        b.op("Unsqueeze", [picked_scores, b.ints("axis1c", 1)], "score_out"),
        b.op("Unsqueeze", [b.op("Cast", [cls_id], "class_f32", to=TensorProto.FLOAT), b.ints("axis1d", 1)], "class_out"),
    ]
    table = b.op("Concat", columns, "table", axis=1)
    out.graph.node.append(helper.make_node("Compress", [table, keep], [OUTPUT_NAME], name=_PREFIX + "detections", axis=0))
    del out.graph.output[:]
    out.graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["num_detections", 7]))
    onnx.checker.check_model(out)
    return out


def to_detections(detections: np.ndarray, box: Letterbox, batch_index: int = 0) -> Detections:
    """Rows of one image from the ``detections`` output -> :class:`Detections` in original-image pixels."""
    rows = np.asarray(detections, dtype=np.float32)
    rows = rows[rows[:, 0] == batch_index]
    return Detections(scale_boxes(rows[:, 1:5], box), rows[:, 5].copy(), rows[:, 6].astype(np.int64))
