"""Append class-wise NMS to an exported YOLO graph, for deployment (ONNX ``NonMaxSuppression``, opset >= 11).

The result has one output ``detections`` of shape (K, 7): batch index, x1, y1, x2, y2, score, class id, in
network-input pixels (the letterbox is not undone: subtract the pad and divide by the ratio on the host).
``max_detections`` applies per class and image, as in ONNX's NonMaxSuppression.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_XYWH_TO_XYXY = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [-0.5, 0, 0.5, 0], [0, -0.5, 0, 0.5]], dtype=np.float32)


def append_nms(
    model: onnx.ModelProto,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
    anchor_based: bool = True,
    output: str = "output0",
) -> onnx.ModelProto:
    """Return a copy of ``model`` whose output is NMS-filtered detections instead of raw predictions.

    ``output`` is (batch, anchors, 5 + classes) for YOLOv5 (cx, cy, w, h, objectness, probabilities) or
    (batch, 4 + classes, anchors) for YOLOv8 (``anchor_based=False``).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    p = "nms/"

    def const(name: str, value) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(value), p + name))
        return p + name

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        g.node.append(helper.make_node(op, inputs, [p + name], name=p + name, **attrs))
        return p + name

    pred = output
    if not anchor_based:
        pred = node("Transpose", [pred], "pred_bnc", perm=[0, 2, 1])
    axis2 = const("axis2", np.array([2], dtype=np.int64))
    boxes = node("Slice", [pred, const("s0", np.array([0], np.int64)), const("s4", np.array([4], np.int64)), axis2], "boxes_xywh")
    if anchor_based:
        obj = node("Slice", [pred, const("s4b", np.array([4], np.int64)), const("s5", np.array([5], np.int64)), axis2], "objectness")
        cls = node("Slice", [pred, const("s5b", np.array([5], np.int64)), const("end", np.array([2**62], np.int64)), axis2], "class_probs")
        scores = node("Mul", [obj, cls], "scores_bnc")
    else:
        scores = node("Slice", [pred, const("s4c", np.array([4], np.int64)), const("end2", np.array([2**62], np.int64)), axis2], "scores_bnc")
    scores_bcn = node("Transpose", [scores], "scores_bcn", perm=[0, 2, 1])
    selected = node(
        "NonMaxSuppression",
        [boxes, scores_bcn, const("max_per_class", np.array([max_detections], np.int64)), const("iou", np.array([iou_threshold], np.float32)), const("conf", np.array([conf_threshold], np.float32))],
        "selected",
        center_point_box=1,
    )
    batch_box = node("Gather", [selected, const("idx_batch_box", np.array([0, 2], np.int64))], "batch_box_index", axis=1)
    picked = node("GatherND", [boxes, batch_box], "picked_xywh")
    xyxy = node("MatMul", [picked, const("xywh_to_xyxy", _XYWH_TO_XYXY)], "picked_xyxy")
    score = node("GatherND", [scores_bcn, selected], "picked_score")
    score = node("Unsqueeze", [score, const("ax1", np.array([1], np.int64))], "picked_score_col")
    batch_cls = node("Gather", [selected, const("idx_batch_cls", np.array([0, 1], np.int64))], "batch_class", axis=1)
    batch_cls = node("Cast", [batch_cls], "batch_class_f", to=TensorProto.FLOAT)
    b_col = node("Slice", [batch_cls, const("c0", np.array([0], np.int64)), const("c1", np.array([1], np.int64)), const("ax1b", np.array([1], np.int64))], "batch_col")
    c_col = node("Slice", [batch_cls, const("c1b", np.array([1], np.int64)), const("c2", np.array([2], np.int64)), const("ax1c", np.array([1], np.int64))], "class_col")
    g.node.append(helper.make_node("Concat", [b_col, xyxy, score, c_col], ["detections"], name=p + "detections", axis=1))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["detections", 7]))
    opset = next((o for o in out.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset.version < 13:
        opset.version = 13
    onnx.checker.check_model(out)
    return out
