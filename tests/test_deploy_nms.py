"""NMS in the graph matches edgekit's numpy post-processing on the real YOLOv5n and a real COCO image."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgekit.models.yolo.deploy_nms import append_nms
from edgekit.models.yolo.processing import Letterbox, postprocess


@pytest.fixture(scope="module")
def sessions(fp32_onnx):
    model = onnx.load(fp32_onnx)
    raw = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    nms = ort.InferenceSession(append_nms(model, 0.25, 0.45).SerializeToString(), providers=["CPUExecutionProvider"])
    return raw, nms


def test_in_graph_nms_equals_numpy_postprocess(sessions, yolo, eval_images):
    family, _ = yolo
    raw, nms = sessions
    identity = Letterbox(1.0, (0.0, 0.0), (640, 640))
    compared = 0
    for path in eval_images[:6]:
        feed = family.preprocess(path)[0]
        ref = postprocess(raw.run(None, feed)[0][0], identity, conf_threshold=0.25, iou_threshold=0.45)
        got = nms.run(None, feed)[0]
        assert got.shape[1] == 7 and (got[:, 0] == 0).all()
        key = lambda boxes, cls: sorted((int(c), *np.round(b, 1)) for b, c in zip(boxes, cls))  # noqa: E731
        ours = key(np.clip(got[:, 1:5], 0, 640), got[:, 6])
        assert ours == key(ref.boxes, ref.classes), path.name
        np.testing.assert_allclose(np.sort(got[:, 5]), np.sort(ref.scores), atol=1e-5)
        compared += len(got)
    assert compared > 10  # the images really have detections


def test_no_detections_gives_empty_output(sessions, yolo, eval_images, fp32_onnx):
    family, _ = yolo
    strict = ort.InferenceSession(append_nms(onnx.load(fp32_onnx), conf_threshold=0.9999).SerializeToString())
    assert strict.run(None, family.preprocess(eval_images[0])[0])[0].shape == (0, 7)
