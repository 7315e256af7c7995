"""Fixtures of the contract tests: a tiny Conv + MatMul graph as the job hands it to every backend."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import COCO

from contracts.models import conv_matmul_onnx, torch_source


@dataclass
class Tiny:
    """The job of the tiny graph: its recipe, Job and Graph (FP32, int8 form and shared ranges, PyTorch source)."""

    recipe_path: Path
    job: object  # edgekit.job.Job
    graph: object  # edgekit.backends.base.Graph
    module: object  # the torch module behind it
    feed: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]  # ONNX Runtime FP32 outputs on ``feed``


def tiny_feed(seed: int) -> dict[str, np.ndarray]:
    return {"images": np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype(np.float32)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    """Every backend's int8 target in one recipe (so the shared ranges cover every placement); one Graph made the way
    the job makes it: the FP32 ONNX in the stage, calibration feeds, ``Job.static_qdq`` for the int8 form."""
    from edgekit import registry
    from edgekit.backends.base import Graph, LazyFeeds
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner
    from edgekit.job import Job
    from edgekit.recipe import load_recipe

    folder = tmp_path_factory.mktemp("tiny")
    model, module = conv_matmul_onnx(folder / "conv_matmul.onnx")
    int8 = [f"{name}:int8" for name in registry.backend_names() if "int8" in registry.backend(name).precisions]
    recipe_path = folder / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "name": "tiny", "model": {"family": "onnx", "weights": str(model)},
        "quantization": {"calibration": {"images": str(COCO / "calib_images"), "count": 8, "warn_below": 8}, "method": "minmax"},
        "targets": ["onnxruntime:fp32", *int8], "benchmark": {"threads": 1},
    }))
    recipe = load_recipe(recipe_path)
    stage = folder / "stage"
    stage.mkdir()
    job = Job(recipe, recipe_path, stage)
    fp32 = stage / "model_fp32.onnx"
    shutil.copyfile(model, fp32)
    graph = Graph("model", fp32, "cnn", calibration=LazyFeeds(list(range(8)), tiny_feed), torch=torch_source(module, channels_last=True))
    job.static_qdq(graph)
    job.graphs["model"] = graph
    feed = tiny_feed(100)
    with OnnxRuntimeRunner(fp32) as runner:
        expected = runner.infer(feed)
    return Tiny(recipe_path, job, graph, module, feed, expected)
