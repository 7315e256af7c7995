"""edgekit's YOLOv8 and YOLO11 modules reproduce the ultralytics package on models built from its yaml files.

Runs only where ultralytics is installed (test-only environment, see tests/parity_env.sh): ultralytics depends on
torchvision, which must never be installed with this CPU torch, so it is installed with ``--no-deps`` and its
import-time read of torchvision's version is answered here without torchvision.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch

_version = importlib.metadata.version


def _version_without_torchvision(name: str) -> str:
    return "0.0.0" if name == "torchvision" else _version(name)


importlib.metadata.version = _version_without_torchvision
try:
    tasks = pytest.importorskip("ultralytics.nn.tasks", reason="ultralytics not installed: run tests/parity_env.sh (test-only, --no-deps)")
finally:
    importlib.metadata.version = _version

from edgekit.models.yolo.build import build_model  # noqa: E402


@pytest.mark.parametrize(("config", "parameters"), [("yolov8n.yaml", 3_157_200), ("yolo11n.yaml", 2_624_080)])
@pytest.mark.parametrize("size", [320, 640])
def test_matches_ultralytics(yolo, eval_images, size, config, parameters):
    family, _ = yolo
    torch.manual_seed(0)
    reference = tasks.DetectionModel(config, verbose=False).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so every layer's parameters matter
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    ours = build_model(dict(reference.yaml))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters()) == parameters
    missing, unexpected = ours.load_state_dict(reference.state_dict(), strict=False)
    assert not [k for k in missing if "dfl" not in k] and not unexpected
    family.input_size = size
    x = torch.from_numpy(family.preprocess(eval_images[0])[0]["images"])
    family.input_size = 640
    with torch.no_grad():
        want = reference(x)[0].numpy()
        got = ours(x).numpy()
    assert got.shape == want.shape == (1, 84, (size // 8) ** 2 + (size // 16) ** 2 + (size // 32) ** 2)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
