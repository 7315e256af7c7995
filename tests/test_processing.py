"""Pre/post-processing: letterbox geometry, box mapping, NMS, candidate selection."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgekit.errors import EdgekitError
from edgekit.models.yolo.processing import Letterbox, letterbox, nms, postprocess, read_image, scale_boxes


def test_letterbox_keeps_aspect_and_centres():
    img = Image.new("RGB", (640, 480), (10, 20, 30))
    canvas, box = letterbox(img, 320)
    assert canvas.shape == (320, 320, 3)
    assert box.ratio == 0.5 and box.pad == (0.0, 40.0)
    assert (canvas[:40] == 114).all() and (canvas[-40:] == 114).all()
    assert (canvas[40:280] == (10, 20, 30)).all()


def test_scale_boxes_inverts_letterbox_and_clips():
    box = Letterbox(ratio=0.5, pad=(0.0, 40.0), original_hw=(480, 640))
    net = np.array([[10.0, 50.0, 110.0, 150.0], [-5.0, 30.0, 400.0, 400.0]])
    out = scale_boxes(net, box)
    np.testing.assert_allclose(out[0], [20, 20, 220, 220])
    np.testing.assert_allclose(out[1], [0, 0, 640, 480])


def test_nms_suppresses_overlaps_only():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.5, 300).tolist() == [0, 2]
    assert nms(boxes, scores, 0.99, 300).tolist() == [0, 1, 2]
    assert nms(boxes, scores, 0.5, 1).tolist() == [0]


def test_postprocess_is_classwise_and_multilabel():
    # two identical boxes of different classes survive; a duplicate of the same class is suppressed
    pred = np.zeros((3, 5 + 3), dtype=np.float32)
    pred[:, :4] = [50, 50, 20, 20]
    pred[:, 4] = 0.9
    pred[0, 5:] = [0.9, 0.0, 0.0]
    pred[1, 5:] = [0.0, 0.8, 0.0]
    pred[2, 5:] = [0.7, 0.0, 0.0]
    dets = postprocess(pred, Letterbox(1.0, (0.0, 0.0), (100, 100)), conf_threshold=0.01, iou_threshold=0.5)
    assert sorted(dets.classes.tolist()) == [0, 1]
    np.testing.assert_allclose(dets.boxes[0], [40, 40, 60, 60])


def test_non_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("hello")
    with pytest.raises(EdgekitError, match="notes.jpg: not a readable image"):
        read_image(bad)
