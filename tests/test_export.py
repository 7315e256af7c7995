"""Export: BN folded, checked against PyTorch on real images, tolerance enforced, atomic."""

from __future__ import annotations

import onnx
import pytest
import torch

from edgekit.errors import EdgekitError
from edgekit.export import check_against_torch, export_onnx


@pytest.fixture(scope="module")
def samples(yolo, eval_images):
    family, _ = yolo
    return [family.preprocess(p)[0]["images"] for p in eval_images[:3]]


def test_export_folds_batchnorm_and_matches_pytorch(yolo, tmp_path, samples):
    _, model = yolo
    path = export_onnx(model, torch.zeros(1, 3, 640, 640), tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    check = check_against_torch(model, path, samples, tolerance=1e-4)
    assert check.passed and check.samples == 3
    assert check.max_rel_error < 1e-4 and check.max_abs_error < 0.05
    assert not list(tmp_path.glob("*.partial"))


def test_dynamic_batch_export_runs_batch_of_two(yolo, tmp_path, samples):
    import numpy as np

    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    _, model = yolo
    path = export_onnx(model, torch.zeros(1, 3, 640, 640), tmp_path / "dyn.onnx", dynamic_batch=True)
    with OnnxRuntimeRunner(path, threads=2) as runner:
        out = runner.infer({"images": np.concatenate(samples[:2])})["output0"]
    assert out.shape == (2, 25200, 85)


def test_tolerance_violation_fails_and_removes_the_model(yolo, tmp_path, samples):
    _, model = yolo
    path = export_onnx(model, torch.zeros(1, 3, 640, 640), tmp_path / "m.onnx")
    with pytest.raises(EdgekitError, match="differs from PyTorch"):
        check_against_torch(model, path, samples[:1], tolerance=1e-15)
    assert not path.exists()
