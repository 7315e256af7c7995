"""Label-free tuning metrics (edgekit.tuning.proxy) on the real YOLOv5n weights and real COCO images, at 320 px."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import ANNOTATIONS, COCO

from edgekit.errors import EdgekitError
from edgekit.evaluators.coco import coco_category_ids, evaluate_coco, load_coco_images
from edgekit.models.yolo.processing import to_coco
from edgekit.tuning import (
    TuningSet,
    box_agreement,
    check_disjoint,
    embedding_cosine,
    output_cosine,
    pseudo_map,
    score_cosine,
    topk_agreement,
)
from edgekit.tuning.proxy import coco_from_dict, map_by_subset

SIZE = 320
TUNE = 6  # calibration images scored (label-free)


@pytest.fixture(scope="module")
def small(yolo, tmp_path_factory):
    """(family at 320 px, FP32 ONNX, INT8 with nothing kept float and MinMax ranges on 4 images): the bad candidate."""
    import onnxslim
    import torch

    from edgekit.export import export_onnx
    from edgekit.quantization.ptq import quantize_static

    family, model = yolo
    family = dataclasses.replace(family, input_size=SIZE)
    folder = tmp_path_factory.mktemp("tuning")
    fp32 = folder / "fp32.onnx"
    onnx.save(onnxslim.slim(onnx.load(export_onnx(model, torch.zeros(1, 3, SIZE, SIZE), folder / "raw.onnx"))), fp32)
    calib = sorted((COCO / "calib_images").iterdir())
    bad = quantize_static(onnx.load(fp32), calib[:4], lambda p: family.preprocess(p)[0], method="minmax", float_nodes=[], use_cache=False)
    int8 = folder / "bad_int8.onnx"
    onnx.save(bad.model, int8)
    return family, fp32, int8, calib[:TUNE]


def _run(family, path, images):
    """(COCO detections, raw outputs, image sizes) of ``path`` on ``images`` (ids 0..n-1)."""
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path, threads=2)
    runner.load()
    category_ids = coco_category_ids(ANNOTATIONS)
    dets, outs, sizes = [], [], {}
    for i, image in enumerate(images):
        feed, meta = family.preprocess(image)
        out = runner.infer(feed)
        outs.append(out)
        sizes[i] = meta.original_hw
        dets.extend(to_coco(family.postprocess(out, meta), i, category_ids))
    return dets, outs, sizes


def test_fp32_against_itself_scores_one_and_bad_int8_scores_lower(small):
    family, fp32, int8, images = small
    ref, ref_out, sizes = _run(family, fp32, images)
    bad, bad_out, _ = _run(family, int8, images)
    assert sum(d["score"] >= 0.25 for d in ref) >= 5  # real detections on the real calibration images
    for conf in (0.1, 0.25, 0.5):
        assert pseudo_map(ref, ref, sizes, conf) == pytest.approx(1.0)
    assert pseudo_map(ref, ref, sizes, metric="mAP50") == pytest.approx(1.0)
    assert box_agreement(ref, ref) == pytest.approx(1.0)
    assert all(output_cosine(a, a) == pytest.approx(1.0) for a in ref_out)

    assert pseudo_map(ref, bad, sizes, 0.25) < 0.5
    assert box_agreement(ref, bad, 0.25) < 0.7
    pred = family.output_name
    assert np.mean([score_cosine(a[pred], b[pred]) for a, b in zip(ref_out, bad_out)]) < 0.9


def test_pseudo_map_refuses_an_empty_pseudo_ground_truth():
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.1}]
    with pytest.raises(EdgekitError, match="no reference detection"):
        pseudo_map(dets, dets, {1: (100, 100)}, conf=0.25)


def test_map_by_subset_equals_evaluating_each_subset_alone():
    """One COCOeval.evaluate, accumulated per subset, gives what evaluate_coco gives on that subset alone."""
    truth = json.loads(ANNOTATIONS.read_text())
    rng = np.random.default_rng(0)
    dets = []
    for a in truth["annotations"]:  # the real boxes, jittered, random scores, some dropped
        if rng.random() < 0.2:
            continue
        x, y, w, h = a["bbox"]
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.random()),
                     "bbox": [x + rng.normal(0, 0.1 * w), y + rng.normal(0, 0.1 * h), w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)]})
    ids = [i for i, _ in load_coco_images(ANNOTATIONS, COCO / "images")]
    subsets = {"all": ids, "a": ids[::2], "b": ids[1::2][:30]}
    got = map_by_subset(coco_from_dict(truth), dets, subsets)
    for name, subset in subsets.items():
        want = evaluate_coco(dets, ANNOTATIONS, subset).metrics
        assert got[name]["mAP50-95"] == pytest.approx(want["mAP50-95"], abs=1e-9)
        assert got[name]["mAP50"] == pytest.approx(want["mAP50"], abs=1e-9)


def test_check_disjoint_refuses_a_copied_evaluation_image(tmp_path):
    evaluation = sorted((COCO / "images").iterdir())[:5]
    tuning = sorted((COCO / "calib_images").iterdir())[:5]
    check_disjoint(tuning, evaluation)  # the shipped calibration and evaluation images share none
    assert TuningSet.create(tuning, evaluation).to_dict()["tuning_images"] == 5

    copy = tmp_path / "renamed.jpg"  # same bytes, another name and folder
    shutil.copyfile(evaluation[2], copy)
    with pytest.raises(EdgekitError, match="1 tuning image"):
        check_disjoint([*tuning, copy], evaluation)
    with pytest.raises(EdgekitError, match="renamed.jpg"):
        TuningSet.create([copy], evaluation)
    with pytest.raises(EdgekitError, match="empty"):
        TuningSet.create([], evaluation)


def test_encoder_agreement():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 16))
    assert embedding_cosine(ref, ref)["min"] == pytest.approx(1.0)
    assert topk_agreement(ref, ref, k=5) == {"top1": 1.0, "top5": 1.0}
    noisy = ref + rng.normal(scale=2.0, size=ref.shape)
    assert embedding_cosine(ref, noisy)["mean"] < 0.8
    gallery = rng.normal(size=(10, 16))
    agree = topk_agreement(ref, noisy, gallery, k=3)
    assert 0.0 <= agree["top1"] < 1.0 and 0.0 <= agree["top3"] < 1.0
    with pytest.raises(ValueError):
        embedding_cosine(ref, ref[:5])
