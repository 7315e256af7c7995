"""The family contract, for every registered family buildable here cheaply: constructed by a Job on a loaded recipe
(the real recipe files with small counts; the onnx family on a CNN made in the test), then ``load``, ``graphs``,
``Job.export`` + ``Job.prepare`` of every declared graph, and ``latency_feeds``, as the one job calls them.

Declared graphs: unique names, a PyTorch module (or, for the onnx family, an ONNX file), example inputs matching the
input names, check feeds keyed by exactly those names. Exported: the ONNX graph's inputs and outputs are the declared
names, the calibration feeds use them, the float scope names nodes of the fused graph. ``latency_feeds``: one feed
per graph (or None for a family that times itself in ``speed``).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import yaml
from conftest import COCO, REPO

from contracts.models import small_cnn_onnx
from edgekit import registry
from edgekit.backends.base import Graph, LazyFeeds, TorchSource
from edgekit.config import Strict
from edgekit.families.base import Family, GraphExport
from edgekit.job import Job
from edgekit.recipe import load_recipe


def yolo_recipe(tmp_path: Path):
    recipe_path = REPO / "recipes" / "yolov5n.yaml"
    recipe = load_recipe(recipe_path)
    recipe.quantization.calibration.count = 8
    recipe.quantization.calibration.warn_below = 8
    return recipe, recipe_path


def clip_recipe(tmp_path: Path):
    recipe_path = REPO / "recipes" / "clip.yaml"
    recipe = load_recipe(recipe_path)
    recipe.quantization.calibration.count = 8
    recipe.quantization.calibration.warn_below = 8
    c = recipe.clip
    c.text_calibration.count = 16
    c.zero_shot.max_images = 4
    c.retrieval.max_images = 4
    return recipe, recipe_path


def vlm_recipe(tmp_path: Path):
    recipe_path = REPO / "recipes" / "smolvlm.yaml"
    recipe = load_recipe(recipe_path)
    recipe.quantization.calibration.count = 4
    recipe.quantization.calibration.warn_below = 4
    recipe.vlm.max_images = 1
    recipe.vlm.prompts = recipe.vlm.prompts[:1]
    return recipe, recipe_path


def onnx_recipe(tmp_path: Path):
    model = small_cnn_onnx(tmp_path / "cnn.onnx")
    recipe_path = tmp_path / "onnx.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "name": "cnn", "model": {"family": "onnx", "weights": str(model)},
        "quantization": {"calibration": {"images": str(COCO / "calib_images"), "count": 8, "warn_below": 8}},
        "onnx": {"scale": "1/255", "images": "${EDGEKIT_ASSETS}/imagenet_sample_1000/images", "max_images": 4},
        "targets": ["onnxruntime:fp32", "onnxruntime:int8"],
    }))
    return load_recipe(recipe_path), recipe_path


RECIPES = {"yolo": yolo_recipe, "clip": clip_recipe, "vlm": vlm_recipe, "onnx": onnx_recipe}


def params() -> list:
    out = []
    for name in registry.family_names():
        marks = [] if name in RECIPES else [pytest.mark.skip(reason=f"no cheap recipe for the {name} family in the contract tests")]
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def check_declared(spec: GraphExport) -> None:
    assert isinstance(spec.name, str) and spec.name and spec.kind in ("cnn", "transformer", "decoder")
    assert spec.input_names and spec.output_names and len(set(spec.input_names)) == len(spec.input_names)
    if spec.onnx is not None:  # an existing ONNX file (the onnx family): no module to export
        assert spec.module is None and Path(spec.onnx).is_file()
    else:
        import torch

        assert isinstance(spec.module, torch.nn.Module)
        assert isinstance(spec.example_inputs, tuple) and len(spec.example_inputs) == len(spec.input_names)
    assert spec.check_feeds, f"{spec.name}: no check feeds"
    for feed in spec.check_feeds:
        assert sorted(feed) == sorted(spec.input_names), (spec.name, sorted(feed), spec.input_names)
    if spec.dynamic_axes:
        assert set(spec.dynamic_axes) <= set(spec.input_names) | set(spec.output_names)


def check_exported(graph: Graph, spec: GraphExport, job: Job) -> None:
    model = onnx.load(graph.fp32)
    assert [i.name for i in model.graph.input] == list(spec.input_names)
    assert [o.name for o in model.graph.output] == list(spec.output_names)
    assert graph.name == spec.name and graph.kind == spec.kind and job.graphs[spec.name] is graph
    assert job.graph_settings[spec.name]["passes"]["verified"]["feeds"] == len(spec.check_feeds)
    nodes = {n.name for n in model.graph.node}
    assert set(graph.float_nodes) <= nodes, sorted(set(graph.float_nodes) - nodes)[:5]
    if graph.backend_float_nodes is not None:
        assert set(graph.float_nodes) <= set(graph.backend_float_nodes) <= nodes
    if graph.calibration is not None:
        assert isinstance(graph.calibration, LazyFeeds) and len(graph.calibration)
        assert sorted(graph.calibration[0]) == sorted(spec.input_names)
    if graph.torch is not None:
        assert isinstance(graph.torch, TorchSource) and graph.torch.output_names
        assert set(graph.torch.channels_last) <= set(graph.torch.input_names)


@pytest.mark.slow
@pytest.mark.parametrize("name", params())
def test_family(name, tmp_path):
    cls = registry.family(name)
    assert issubclass(cls, Family) and cls.name == name and cls.forms
    recipe, recipe_path = RECIPES[name](tmp_path)
    if cls.config is not None:
        assert issubclass(cls.config, Strict) and isinstance(getattr(recipe, name), cls.config)
    stage = tmp_path / "stage"
    stage.mkdir()
    job = Job(recipe, recipe_path, stage)
    family = job.family
    assert isinstance(family, cls) and family.job is job and family.recipe is recipe
    family.load()
    specs = family.graphs()
    assert specs and len({s.name for s in specs}) == len(specs)
    assert cls.main_graph is None or cls.main_graph in {s.name for s in specs}
    for spec in specs:
        check_declared(spec)
    for spec in specs:
        graph = job.export(spec)
        job.prepare(graph)
        check_exported(graph, spec, job)
    feeds = family.latency_feeds()
    if feeds is None:
        assert type(family).speed is not Family.speed, "latency_feeds() is None but the family does not time itself in speed()"
    else:
        assert set(feeds) == {s.name for s in specs}
        for spec in specs:
            assert sorted(feeds[spec.name]) == sorted(spec.input_names)
    assert isinstance(family.settings(), dict)
