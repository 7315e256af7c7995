"""The YOLO family on the real YOLOv5n weights and COCO images: structure and reference accuracy in PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ANNOTATIONS, COCO

from edgekit.errors import EdgekitError
from edgekit.export import fuse_batchnorm
from edgekit.models.yolo.build import build_model
from edgekit.models.yolo.family import YoloFamily


def test_architecture_matches_official_parameter_count(yolo):
    _, model = yolo
    assert sum(p.numel() for p in fuse_batchnorm(model).parameters()) == 1_867_405
    assert model.head.stride.tolist() == [8.0, 16.0, 32.0]
    assert model(torch.zeros(1, 3, 320, 320)).shape == (1, 3 * (40 * 40 + 20 * 20 + 10 * 10), 85)


def test_pytorch_fp32_reproduces_reference_map(yolo):
    """README of the assets: mAP50-95 0.303, mAP50 0.475 on the 158 images (tolerance 0.003)."""
    from edgekit.evaluators.coco import coco_category_ids, evaluate_coco, load_coco_images
    from edgekit.models.yolo.processing import to_coco

    family, model = yolo
    cats = coco_category_ids(ANNOTATIONS)
    detections, ids = [], []
    torch.set_num_threads(2)
    with torch.no_grad():
        for image_id, path in load_coco_images(ANNOTATIONS, COCO / "images"):
            feed, box = family.preprocess(path)
            pred = model(torch.from_numpy(feed["images"])).numpy()
            detections += to_coco(family.postprocess({"output0": pred}, box), image_id, cats)
            ids.append(image_id)
    metrics = evaluate_coco(detections, ANNOTATIONS, ids).metrics
    assert len(ids) == 158
    assert abs(metrics["mAP50-95"] - 0.303) <= 0.003, metrics
    assert abs(metrics["mAP50"] - 0.475) <= 0.003, metrics


def test_input_size_must_be_a_stride_multiple():
    with pytest.raises(EdgekitError, match="multiple of the model's stride 32.*e.g. 640"):
        YoloFamily(input_size=641).validate_input_size("recipe.yaml")


def test_unknown_layer_type_is_rejected():
    arch = {"nc": 2, "backbone": [[-1, 1, "Focus", [16, 3]]], "head": []}
    with pytest.raises(EdgekitError, match="unsupported YOLO layer type 'Focus'"):
        build_model(arch)


def test_yolov8_style_architecture_builds_and_runs():
    """The anchor-free C2f/DFL head builds from a YOLOv8n-shaped table (random weights)."""
    arch = {
        "nc": 80, "depth_multiple": 0.33, "width_multiple": 0.25, "max_channels": 1024,
        "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C2f", [128, True]],
                     [-1, 1, "Conv", [256, 3, 2]], [-1, 6, "C2f", [256, True]], [-1, 1, "Conv", [512, 3, 2]],
                     [-1, 6, "C2f", [512, True]], [-1, 1, "Conv", [1024, 3, 2]], [-1, 3, "C2f", [1024, True]],
                     [-1, 1, "SPPF", [1024, 5]]],
        "head": [[-1, 1, "nn.Upsample", ["None", 2, "nearest"]], [[-1, 6], 1, "Concat", [1]], [-1, 3, "C2f", [512]],
                 [-1, 1, "nn.Upsample", ["None", 2, "nearest"]], [[-1, 4], 1, "Concat", [1]], [-1, 3, "C2f", [256]],
                 [-1, 1, "Conv", [256, 3, 2]], [[-1, 12], 1, "Concat", [1]], [-1, 3, "C2f", [512]],
                 [-1, 1, "Conv", [512, 3, 2]], [[-1, 9], 1, "Concat", [1]], [-1, 3, "C2f", [1024]],
                 [[15, 18, 21], 1, "Detect", ["nc"]]],
    }
    model = build_model(arch)
    assert sum(p.numel() for p in model.parameters()) == 3_157_200  # Ultralytics' published YOLOv8n size
    out = model(torch.zeros(1, 3, 320, 320))
    assert out.shape == (1, 84, 40 * 40 + 20 * 20 + 10 * 10)
    assert np.isfinite(out.detach().numpy()).all()


YOLO11N = {
    "nc": 80, "scales": {"n": [0.50, 0.25, 1024]}, "scale": "n",
    "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 2, "C3k2", [256, False, 0.25]],
                 [-1, 1, "Conv", [256, 3, 2]], [-1, 2, "C3k2", [512, False, 0.25]], [-1, 1, "Conv", [512, 3, 2]],
                 [-1, 2, "C3k2", [512, True]], [-1, 1, "Conv", [1024, 3, 2]], [-1, 2, "C3k2", [1024, True]],
                 [-1, 1, "SPPF", [1024, 5]], [-1, 2, "C2PSA", [1024]]],
    "head": [[-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, 6], 1, "Concat", [1]], [-1, 2, "C3k2", [512, False]],
             [-1, 1, "nn.Upsample", [None, 2, "nearest"]], [[-1, 4], 1, "Concat", [1]], [-1, 2, "C3k2", [256, False]],
             [-1, 1, "Conv", [256, 3, 2]], [[-1, 13], 1, "Concat", [1]], [-1, 2, "C3k2", [512, False]],
             [-1, 1, "Conv", [512, 3, 2]], [[-1, 10], 1, "Concat", [1]], [-1, 2, "C3k2", [1024, True]],
             [[16, 19, 22], 1, "Detect", ["nc"]]],
}


def test_yolo11_builds_and_exports_to_onnx(tmp_path, yolo, eval_images):
    """YOLO11n (C3k2, C2PSA attention, depthwise head) builds to Ultralytics' size and exports faithfully."""
    from edgekit.export import check_against_torch, export_onnx

    family, _ = yolo
    model = build_model(YOLO11N)
    assert sum(p.numel() for p in model.parameters()) == 2_624_080  # Ultralytics' published YOLO11n size
    path = export_onnx(model, torch.zeros(1, 3, 640, 640), tmp_path / "yolo11n.onnx")
    check = check_against_torch(model, path, [family.preprocess(eval_images[0])[0]["images"]], tolerance=1e-4)
    assert check.passed
