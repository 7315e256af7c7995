"""Shared fixtures: the real assets, the real YOLOv5n weights, and models exported from them once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.assets import assets_dir

ASSETS = assets_dir()
COCO = ASSETS / "coco_val2017_subset"
WEIGHTS_ST = ASSETS / "yolo" / "yolov5n.safetensors"
WEIGHTS_PT = ASSETS / "yolo" / "yolov5n.pt"
ANNOTATIONS = COCO / "annotations" / "instances_val2017_subset.json"
CAPTIONS = COCO / "annotations" / "captions_val2017_subset.json"
TINYCLIP_CONFIG = ASSETS / "clip_tokenizer" / "TinyCLIP-ViT-8M-16-Text-3M.config.json"
CLIP_BPE = ASSETS / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
REPO = Path(__file__).resolve().parents[1]


def edgekit(*args, cwd: Path = REPO, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run the ``edgekit`` command line in a subprocess (no progress bars, wide console)."""
    env = dict(os.environ, EDGEKIT_PROGRESS="0", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def pytest_configure(config: pytest.Config) -> None:
    if not WEIGHTS_ST.is_file():
        message = f"real assets not found at {ASSETS}: set EDGEKIT_ASSETS to the shared assets folder"
        if os.environ.get("CI"):
            raise pytest.UsageError(message)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("EDGEKIT_CACHE", str(tmp_path_factory.mktemp("edgekit-cache")))
    os.environ.setdefault("EDGEKIT_PROGRESS", "0")


@pytest.fixture(scope="session")
def yolo():
    """(family, torch model) for the official YOLOv5n weights."""
    from edgekit.models.yolo.family import YoloFamily

    family = YoloFamily(input_size=640)
    return family, family.load_torch(WEIGHTS_ST)


@pytest.fixture(scope="session")
def fp32_onnx(yolo, tmp_path_factory) -> Path:
    """YOLOv5n exported to ONNX (BN folded) and simplified with onnxslim."""
    import onnx
    import onnxslim
    import torch

    from edgekit.export import export_onnx

    _, model = yolo
    folder = tmp_path_factory.mktemp("fp32")
    raw = export_onnx(model, torch.zeros(1, 3, 640, 640), folder / "raw.onnx")
    slim = folder / "fp32.onnx"
    onnx.save(onnxslim.slim(onnx.load(raw)), slim)
    return slim


@pytest.fixture(scope="session")
def calib_images() -> list[Path]:
    return sorted((COCO / "calib_images").iterdir())


@pytest.fixture(scope="session")
def eval_images() -> list[Path]:
    return sorted((COCO / "images").iterdir())


@pytest.fixture(scope="session")
def clip():
    """(family, towers) of TinyCLIP-ViT-8M-16-Text-3M with seed-0 random weights and the real CLIP tokenizer."""
    from edgekit.models.clip.family import ClipFamily

    family = ClipFamily()
    model = family.load(None, str(TINYCLIP_CONFIG), str(CLIP_BPE), seed=0)
    return family, family.modules(model)


def captions(n: int) -> list[str]:
    """The first ``n`` COCO captions of the assets (by annotation id), stripped."""
    import json

    return [a["caption"].strip() for a in json.loads(CAPTIONS.read_text())["annotations"][:n]]


def stand_in_trtexec(bin_dir: Path, body: str) -> str:
    """Write an executable Python script named ``trtexec`` into ``bin_dir`` (a stand-in for NVIDIA's tool, which
    cannot run here) and return a PATH value that finds it first."""
    import stat
    import sys

    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = bin_dir / "trtexec"
    fake.write_text(f"#!{sys.executable}\n{body}")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"



VLM_CONFIGS = {"idefics3": REPO / "recipes" / "models" / "smolvlm-tiny", "llava": REPO / "recipes" / "models" / "llava-tiny"}


@pytest.fixture(scope="session")
def vlm_export(tmp_path_factory):
    """``{arch: (family, model, graph paths)}``: the scaled-down SmolVLM/Idefics3 and LLaVA configs of the recipes,
    random weights (seed 0), real CLIP BPE tokenizer, exported once per session."""
    from edgekit.models.vlm.family import VlmFamily
    from edgekit.models.vlm.graphs import export_vlm

    out = {}
    for arch, folder in VLM_CONFIGS.items():
        family, model = VlmFamily.load(None, folder, CLIP_BPE, 0)
        out[arch] = (family, model, export_vlm(model, family.arch, tmp_path_factory.mktemp(f"vlm-{arch}")))
    return out
