"""Evaluators and profiling on real data: COCO metric sanity, fidelity math, latency stats, memory, device."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgekit.evaluators.coco import coco_category_ids, coco_class_names, evaluate_coco
from edgekit.evaluators.fidelity import compare_outputs, summarize_fidelity
from edgekit.profiling.device import device_fingerprint
from edgekit.profiling.latency import measure_latency, measure_latency_interleaved
from edgekit.profiling.memory import PeakMemory
from edgekit.runners.onnxruntime import OnnxRuntimeRunner

from conftest import ANNOTATIONS, COCO


def _ground_truth_as_detections() -> list[dict]:
    data = json.loads(ANNOTATIONS.read_text())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0} for a in data["annotations"] if not a["iscrowd"]]


def test_ground_truth_scores_perfectly_and_shifted_boxes_score_zero():
    dets = _ground_truth_as_detections()
    perfect = evaluate_coco(dets, ANNOTATIONS)
    assert perfect.metrics["mAP50-95"] > 0.99 and perfect.metrics["mAP50"] > 0.99
    assert len(perfect.per_class_ap) == 80
    shifted = [dict(d, bbox=[d["bbox"][0] + 5000, *d["bbox"][1:]]) for d in dets]
    assert evaluate_coco(shifted, ANNOTATIONS).metrics["mAP50-95"] == 0.0
    assert evaluate_coco([], ANNOTATIONS).metrics["mAP50"] == 0.0


def test_category_order_matches_yolo_classes():
    names = (COCO / "classes.txt").read_text().split("\n")
    assert coco_class_names(ANNOTATIONS) == [n for n in names if n][:80]
    ids = coco_category_ids(ANNOTATIONS)
    assert len(ids) == 80 and ids == sorted(ids)


def test_fidelity_metrics():
    a = {"y": np.array([1.0, 2.0, 3.0])}
    assert compare_outputs(a, a)["y"] == {"max_abs": 0.0, "mean_abs": 0.0, "cosine": 1.0}
    b = {"y": np.array([1.0, 2.0, 4.0])}
    m = compare_outputs(a, b)["y"]
    assert m["max_abs"] == 1.0 and abs(m["mean_abs"] - 1 / 3) < 1e-12
    assert abs(m["cosine"] - 17 / (np.sqrt(14) * np.sqrt(21))) < 1e-12
    s = summarize_fidelity([a, a], [a, b])
    assert s["max_abs"] == 1.0 and s["cosine_min"] < 1.0


def _matmul_model(path):
    w = helper.make_tensor("w", TensorProto.FLOAT, [256, 256], np.random.default_rng(0).random(256 * 256).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 256])], [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_latency_statistics_are_ordered(tmp_path):
    feed = {"x": np.ones((64, 256), np.float32)}
    with OnnxRuntimeRunner(_matmul_model(tmp_path / "mm.onnx"), threads=1) as runner:
        stats = measure_latency(runner, feed, warmup=2, runs=20)
        both = measure_latency_interleaved({"a": (runner, feed), "b": (runner, feed)}, warmup=1, runs=10)
    assert stats.runs == 20 and 0 < stats.min <= stats.median <= stats.p90 <= stats.p99
    assert stats.throughput_per_s == 1000.0 / stats.median
    assert set(both) == {"a", "b"} and both["a"].runs == 10


def test_peak_memory_sees_an_allocation():
    with PeakMemory() as memory:
        block = np.ones(200 * 2**20 // 8)
        block[::4096] = 2.0
    assert memory.delta_mb >= 150
    del block


def test_device_fingerprint_is_serializable():
    info = device_fingerprint()
    json.dumps(info)
    assert info["logical_cores"] >= 1 and info["cpu_model"] and isinstance(info["isa_flags"], list)
    assert "onnxruntime" in info["versions"]
