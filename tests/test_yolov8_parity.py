"""YOLOv8 parity: edgekit's C2f/SPPF/DetectV8 network reproduces the ``ultralytics`` package's forward pass.

Runs only in the throwaway environment made by ``tests/parity_env.sh`` (ultralytics is not an edgekit
dependency; the main environment skips this file). ultralytics 8.4 reads torchvision's *version metadata* at
import time (``ultralytics/utils/__init__.py``) but never imports torchvision on the model-building or eval
forward path. torchvision must not be installed on this machine, so while ``ultralytics`` is imported (and
only then) ``importlib.metadata.version("torchvision")`` answers ``0.28.0`` (the release paired with torch 2.13).
The test then checks that torchvision was never actually imported.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import tempfile

import numpy as np
import pytest

SKIP_REASON = "ultralytics is not installed: the YOLOv8 parity test runs only in the env made by tests/parity_env.sh"


def _import_ultralytics():
    if importlib.util.find_spec("ultralytics") is None:
        return pytest.importorskip("ultralytics", reason=SKIP_REASON)  # skips cleanly
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-cfg-"))  # no writes to ~/.config
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no update checks / downloads
    os.environ.setdefault("YOLO_VERBOSE", "False")
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        if name == "torchvision":
            try:
                return real_version(name)
            except importlib.metadata.PackageNotFoundError:
                return "0.28.0"
        return real_version(name)

    importlib.metadata.version = version
    try:
        return pytest.importorskip("ultralytics", reason=SKIP_REASON)
    finally:
        importlib.metadata.version = real_version


ultralytics = _import_ultralytics()

import torch  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

from edgekit.models.yolo.build import build_model  # noqa: E402
from edgekit.models.yolo.modules import DetectV8  # noqa: E402
from edgekit.models.yolo.processing import preprocess  # noqa: E402

from conftest import COCO  # noqa: E402


@pytest.fixture(scope="module")
def ultralytics_v8n() -> torch.nn.Module:
    """Ultralytics' YOLOv8n from its own yolov8n.yaml, random weights, with randomised BatchNorm statistics."""
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # freshly initialised BN is the identity; perturb it so folding/eps bugs would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(1 + 0.2 * torch.rand(m.running_var.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    path = sorted((COCO / "images").iterdir())[0]
    tensor, _ = preprocess(path, 640)
    return torch.from_numpy(tensor)


def test_torchvision_was_not_imported(ultralytics_v8n):
    assert "torchvision" not in sys.modules


def test_edgekit_matches_ultralytics_yolov8n(ultralytics_v8n, image):
    ref_model = ultralytics_v8n
    model = build_model(ref_model.yaml)  # the same architecture table ultralytics built from (scales + scale "n")
    assert isinstance(model.head, DetectV8)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref_model.parameters()) == 3_157_200
    assert model.head.stride.tolist() == ref_model.stride.tolist() == [8.0, 16.0, 32.0]

    ours = model.state_dict()
    theirs = {k: v for k, v in ref_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(ours) - set(theirs) == set() and set(theirs) - set(ours) == set()
    for key, tensor in theirs.items():
        assert tensor.shape == ours[key].shape, key
    model.load_state_dict(theirs, strict=False)
    model.eval()

    with torch.no_grad():
        expected = ref_model(image)[0].numpy()  # eval mode: (decoded (batch, 4 + nc, anchors), raw feature maps)
        actual = model(image).numpy()
    assert expected.shape == actual.shape == (1, 84, 80 * 80 + 40 * 40 + 20 * 20)
    assert np.isfinite(expected).all()
    err = np.abs(actual.astype(np.float64) - expected)
    rel = err.max() / max(1.0, float(np.abs(expected).max()))
    assert rel < 1e-4, f"max abs diff {err.max():.3e}, relative {rel:.3e}"
    # The class scores (probabilities) agree tightly on their own, not only relative to the pixel-valued boxes.
    assert err[:, 4:].max() < 1e-4
