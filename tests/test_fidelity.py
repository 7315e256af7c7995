"""Fidelity metrics against values derived by hand, and on real ONNX Runtime outputs."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner
from edgekit.errors import EdgekitError
from edgekit.evaluators.fidelity import compare_outputs, summarize_fidelity


def test_identical_outputs():
    ref = {"boxes": np.random.default_rng(0).normal(size=(2, 300, 4)).astype(np.float32), "ids": np.arange(7, dtype=np.int64)}
    out = compare_outputs(ref, {k: v.copy() for k, v in ref.items()})
    assert set(out) == {"boxes", "ids"}
    for m in out.values():
        assert m["max_abs"] == 0.0 and m["mean_abs"] == 0.0 and m["cosine"] == pytest.approx(1.0, abs=1e-12)


def test_alternating_perturbation_matches_closed_form():
    # a = 1 everywhere, b = a +/- 0.1 alternately: |a-b| = 0.1 everywhere and
    # cos = sum(b) / (sqrt(n) * sqrt(sum(b^2))) = n / (sqrt(n) * sqrt(n/2 * (1.21 + 0.81))) = sqrt(1 / 1.01).
    n = 1000
    a = np.ones((10, n // 10), np.float32)
    b = a + np.where(np.arange(n) % 2 == 0, 0.1, -0.1).reshape(a.shape)
    m = compare_outputs({"y": a}, {"y": b})["y"]
    assert m["max_abs"] == pytest.approx(0.1, rel=1e-6) and m["mean_abs"] == pytest.approx(0.1, rel=1e-6)
    assert m["cosine"] == pytest.approx(math.sqrt(1 / 1.01), rel=1e-7)


def test_cosine_sign_scale_and_zero_cases():
    a = np.array([3.0, 4.0, 0.0])
    assert compare_outputs({"y": a}, {"y": -a})["y"]["cosine"] == pytest.approx(-1.0)
    scaled = compare_outputs({"y": a}, {"y": 2 * a})["y"]
    assert scaled["cosine"] == pytest.approx(1.0) and scaled["max_abs"] == 4.0 and scaled["mean_abs"] == pytest.approx(7 / 3)
    assert compare_outputs({"y": a}, {"y": np.array([-4.0, 3.0, 0.0])})["y"]["cosine"] == pytest.approx(0.0, abs=1e-15)
    assert compare_outputs({"y": np.zeros(4)}, {"y": np.zeros(4)})["y"]["cosine"] == 1.0
    assert compare_outputs({"y": np.zeros(4)}, {"y": np.ones(4)})["y"]["cosine"] == 0.0


def test_float16_candidate_is_compared_in_float64():
    ref = np.array([1.0, 2048.0, 0.1], np.float32)
    cand = ref.astype(np.float16)  # 0.1 -> 0.0999755859375 in float16
    m = compare_outputs({"y": ref}, {"y": cand})["y"]
    assert m["max_abs"] == pytest.approx(abs(float(np.float32(0.1)) - 0.0999755859375), rel=1e-6)


def test_summary_is_the_worst_over_samples_and_outputs():
    a = {"p": np.array([1.0, 2.0, 3.0]), "q": np.ones(4)}
    b = {"p": np.array([1.0, 2.0, 4.0]), "q": np.ones(4)}  # p: max 1, mean 1/3, cos 17/sqrt(14*21)
    c = {"p": a["p"], "q": np.array([1.0, 1.0, 1.0, 1.5])}  # q: max 0.5, mean 0.125, cos 4.5/(2*sqrt(5.25)) = 0.982
    s = summarize_fidelity([a, a, a], [a, b, c])
    assert s["max_abs"] == 1.0 and s["mean_abs"] == pytest.approx(1 / 3)
    assert s["cosine_min"] == pytest.approx(4.5 / (2 * math.sqrt(5.25))) and s["samples"] == 3.0
    assert summarize_fidelity([a], [b])["cosine_min"] == pytest.approx(17 / math.sqrt(14 * 21))
    assert summarize_fidelity([a], [a]) == {"max_abs": 0.0, "mean_abs": 0.0, "cosine_min": pytest.approx(1.0), "samples": 1.0}


def test_mismatches_are_errors():
    with pytest.raises(EdgekitError, match="lack"):
        compare_outputs({"y": np.ones(3), "z": np.ones(3)}, {"y": np.ones(3)})
    with pytest.raises(EdgekitError, match="shape"):
        compare_outputs({"y": np.ones((2, 3))}, {"y": np.ones((3, 2))})
    with pytest.raises(EdgekitError, match="shape"):
        compare_outputs({"y": np.ones(3)}, {"y": np.ones(1)})  # would silently broadcast
    with pytest.raises(ValueError):
        summarize_fidelity([{"y": np.ones(3)}], [])


def test_real_onnxruntime_outputs_against_float64_reference(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(128, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 128])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "mm.onnx")
    x = rng.normal(size=(8, 128)).astype(np.float32)
    with OnnxRuntimeRunner(tmp_path / "mm.onnx", threads=1) as runner:
        got = runner.infer({"x": x})
    exact = {"y": x.astype(np.float64) @ w.astype(np.float64)}
    m = compare_outputs(exact, got)["y"]
    assert 0 < m["max_abs"] < 1e-3 and m["mean_abs"] < m["max_abs"] and m["cosine"] > 1 - 1e-10
    noisy = compare_outputs(exact, {"y": got["y"] + rng.normal(scale=1.0, size=got["y"].shape)})["y"]
    assert noisy["cosine"] < m["cosine"] and 0.5 < noisy["mean_abs"] < 1.1  # E|N(0,1)| = 0.798
