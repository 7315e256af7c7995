"""COCO evaluation on the real val2017 subset: ground truth scores 1, wrong boxes score 0, class mapping by rank."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import ANNOTATIONS, COCO

from edgekit.errors import EdgekitError
from edgekit.evaluators.coco import coco_category_ids, coco_class_names, evaluate_coco, load_coco_images

pytestmark = pytest.mark.skipif(not ANNOTATIONS.is_file(), reason="real COCO subset not available")


@pytest.fixture(scope="module")
def gt() -> dict:
    return json.loads(ANNOTATIONS.read_text())


def _as_detections(annotations: list[dict], crowd: bool = False) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in annotations
        if crowd or not a["iscrowd"]
    ]


def test_ground_truth_as_detections_scores_one(gt):
    # Crowd boxes are "ignore" regions in COCOeval: they are never counted as missed ground truth, and a detection
    # matched to one is neither a TP nor an FP. So the 1,408 non-crowd boxes alone give exactly 1.0 (every box is a
    # TP at IoU 1 for all thresholds); adding the 16 crowd boxes as detections changes nothing measurable.
    dets = _as_detections(gt["annotations"])
    assert len(dets) == 1408
    before = json.dumps(dets)
    result = evaluate_coco(dets, ANNOTATIONS)
    assert json.dumps(dets) == before, "the caller's detections must not be modified"
    for name in ("mAP50-95", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large"):
        assert result.metrics[name] == pytest.approx(1.0, abs=1e-9), name
    assert result.num_images == 158 and result.num_detections == 1408
    with_crowd = evaluate_coco(_as_detections(gt["annotations"], crowd=True), ANNOTATIONS)
    assert with_crowd.metrics["mAP50-95"] > 0.99


def test_shifted_boxes_score_zero(gt):
    shifted = [dict(d, bbox=[d["bbox"][0] + 5000, d["bbox"][1] + 5000, *d["bbox"][2:]]) for d in _as_detections(gt["annotations"])]
    result = evaluate_coco(shifted, ANNOTATIONS)
    assert result.metrics["mAP50-95"] == 0.0 and result.metrics["mAP50"] == 0.0
    assert set(result.per_class_ap.values()) == {0.0}


def test_half_shifted_boxes_score_between(gt):
    # Boxes moved by half their width overlap the truth at IoU 1/3: matched at no threshold (all >= 0.5).
    # Moving them by 5% of the width (IoU ~0.905) keeps them above 0.5..0.9 but below 0.95.
    dets = _as_detections(gt["annotations"])
    nudged = [dict(d, bbox=[d["bbox"][0] + 0.05 * d["bbox"][2], *d["bbox"][1:]]) for d in dets]
    m = evaluate_coco(nudged, ANNOTATIONS).metrics
    assert m["mAP50"] == pytest.approx(1.0) and m["mAP75"] == pytest.approx(1.0)
    assert m["mAP50-95"] == pytest.approx(0.9, abs=1e-6)  # 9 of the 10 IoU thresholds (0.50..0.90) are met


def test_empty_detections_score_zero():
    result = evaluate_coco([], ANNOTATIONS)
    assert all(v == 0.0 for v in result.metrics.values()) and len(result.metrics) >= 6
    assert result.num_detections == 0 and result.num_images == 158
    assert len(result.per_class_ap) == 80 and set(result.per_class_ap.values()) == {0.0}


def test_per_class_ap_names_and_indexing(gt):
    dets = _as_detections(gt["annotations"])
    assert len(evaluate_coco(dets, ANNOTATIONS).per_class_ap) == 80
    person = next(c["id"] for c in gt["categories"] if c["name"] == "person")
    without_person = evaluate_coco([d for d in dets if d["category_id"] != person], ANNOTATIONS)
    assert without_person.per_class_ap["person"] == 0.0
    others = [v for k, v in without_person.per_class_ap.items() if k != "person"]
    assert len(others) == 79 and min(others) == pytest.approx(1.0)
    assert without_person.metrics["mAP50-95"] == pytest.approx(79 / 80)


def test_image_ids_restrict_the_evaluation(gt):
    dets = _as_detections(gt["annotations"])
    ids = sorted({img["id"] for img in gt["images"]})[:40]
    subset = [d for d in dets if d["image_id"] in ids]
    restricted = evaluate_coco(dets, ANNOTATIONS, ids)  # detections on other images are ignored
    assert restricted.metrics["mAP50-95"] == pytest.approx(1.0)
    assert restricted.num_images == 40 and restricted.num_detections == len(subset)
    present = {c["name"] for c in gt["categories"] if any(a["category_id"] == c["id"] and a["image_id"] in ids and not a["iscrowd"] for a in gt["annotations"])}
    assert set(restricted.per_class_ap) == present
    assert evaluate_coco(subset, ANNOTATIONS).metrics["mAP50-95"] < 0.9  # the other 118 images' boxes are missed


def test_category_mapping_follows_yolo_rank_order(gt):
    ids = coco_category_ids(ANNOTATIONS)
    assert len(ids) == 80 and ids == sorted(ids) and len(set(ids)) == 80
    assert ids != list(range(1, 81))  # COCO ids have gaps: the rank mapping is not the identity
    assert coco_class_names(ANNOTATIONS) == (COCO / "classes.txt").read_text().splitlines()
    # YOLO labels (class index = rank) mapped through ``ids`` give the same boxes per image as the json (non-crowd).
    by_image = Counter((a["image_id"], a["category_id"]) for a in gt["annotations"] if not a["iscrowd"])
    from_labels = Counter()
    for label in (COCO / "labels").glob("*.txt"):
        for line in label.read_text().splitlines():
            from_labels[(int(label.stem), ids[int(line.split()[0])])] += 1
    assert from_labels == by_image


def test_load_coco_images(tmp_path):
    items = load_coco_images(ANNOTATIONS, COCO / "images")
    assert len(items) == 158 and [i for i, _ in items] == sorted(i for i, _ in items)
    assert all(p.is_file() and p.name == f"{i:012d}.jpg" for i, p in items)
    (tmp_path / items[0][1].name).symlink_to(items[0][1])
    assert load_coco_images(ANNOTATIONS, tmp_path) == [(items[0][0], tmp_path / items[0][1].name)]
    with pytest.raises(EdgekitError, match="image folder not found"):
        load_coco_images(ANNOTATIONS, tmp_path / "nope")
    with pytest.raises(EdgekitError, match="annotation file not found"):
        load_coco_images(tmp_path / "missing.json", COCO / "images")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "{}", '{"images": [], "annotations": [{}], "categories": []}', "\x89PNG\x00\xff"])
def test_bad_annotation_files_are_user_errors(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="latin-1")
    with pytest.raises(EdgekitError) as info:
        evaluate_coco([], path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_foreign_image_ids_are_user_errors(gt):
    det = _as_detections(gt["annotations"])[0]
    with pytest.raises(EdgekitError, match="not in the annotation file"):
        evaluate_coco([dict(det, image_id=123456789)], ANNOTATIONS)
    with pytest.raises(EdgekitError, match="not in the annotation file"):
        evaluate_coco([det], ANNOTATIONS, image_ids=[123456789])


def test_annotation_cache_follows_file_changes(tmp_path, gt):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(gt))
    assert len(coco_category_ids(path)) == 80
    path.write_text(json.dumps(dict(gt, categories=gt["categories"][:5], annotations=[a for a in gt["annotations"] if a["category_id"] <= 5])))
    assert coco_category_ids(path) == [1, 2, 3, 4, 5]
