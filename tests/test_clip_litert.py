"""LiteRT builds of the CLIP towers (``tflite:<precision>``): TinyCLIP-ViT-8M-16-Text-3M with random weights (seed 0),
converted from PyTorch with litert-torch, quantized with ai-edge-quantizer, run by ai-edge-litert on real COCO
images and captions, compared with the PyTorch towers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CAPTIONS, COCO, captions
from conftest import CLIP_BPE as BPE
from conftest import TINYCLIP_CONFIG as CONFIG

pytest.importorskip("litert_torch", reason='litert-torch is not installed (pip install -e ".[tflite]"): no LiteRT conversion')
pytest.importorskip("ai_edge_litert", reason='ai-edge-litert is not installed (pip install -e ".[tflite]")')
pytest.importorskip("ai_edge_quantizer", reason='ai-edge-quantizer is not installed (pip install -e ".[tflite]")')

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.9999, "dynamic": 0.99, "int8": 0.99}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A CLIP job (the family loaded, no export): 8 calibration images and 32 captions, tflite settings of the recipe."""
    import yaml

    from edgekit.job import Job
    from edgekit.recipe import load_recipe

    stage = tmp_path_factory.mktemp("clip-tflite")
    data = {
        "name": "clip-litert", "model": {"family": "clip", "config": str(CONFIG), "tokenizer": str(BPE)}, "targets": ["tflite:fp32"],
        "quantization": {"calibration": {"images": str(COCO / "calib_images"), "count": 8, "warn_below": 1}},
        "clip": {"text_calibration": {"captions": str(CAPTIONS), "count": 32}}, "benchmark": {"threads": 2},
    }
    path = stage / "clip-litert.yaml"
    path.write_text(yaml.safe_dump(data))
    job = Job(load_recipe(path), path, stage)
    job.family.load()
    return job


@pytest.fixture(scope="module")
def graphs(job):
    """Both towers as the job hands them to LiteRT: the family's PyTorch source, calibration feeds and int8 mode (the
    FP32 ONNX is never read by LiteRT)."""
    from edgekit.backends import Graph

    family, c = job.family, job.recipe.clip
    out = {}
    for name, mode in (("vision", c.vision_int8), ("text", c.text_int8)):
        out[name] = Graph(name, Path("unused.onnx"), "transformer", calibration=family.calibration(name), torch=family.torch_source(name), int8=mode)
    assert out["vision"].int8 == "static" and out["text"].int8 == "dynamic" and len(out["vision"].calibration) == 8 and len(out["text"].calibration) == 32
    assert out["vision"].calibration.items == sorted((COCO / "calib_images").iterdir())[:8] and out["text"].calibration.items == captions(32)
    return out


@pytest.fixture(scope="module")
def built(job, graphs):
    """Every tflite precision of both towers, built as the CLIP job builds them (one stage, fp32 converted once)."""
    from edgekit import registry
    from edgekit.targets import Target

    backend = registry.backend("tflite")
    assert backend.available() is None
    return {(p, name): backend.build(graphs[name], Target(backend="tflite", precision=p), job.run) for p in PRECISIONS for name in ("vision", "text")}


@pytest.fixture(scope="module")
def reference(job):
    """4 real images and 8 real captions (trimmed to the longest), and the PyTorch embeddings."""
    family, modules = job.family.clip, job.family.modules
    pixels = np.concatenate([family.image_feed(p)["pixel_values"] for p in sorted((COCO / "images").iterdir())[:4]])
    feed = family.text_feed(captions(8))
    with torch.no_grad():
        image = modules["vision"](torch.from_numpy(pixels)).numpy()
        text = modules["text"](*[torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask")]).numpy()
    return pixels, feed, image, text


@pytest.mark.parametrize("precision", PRECISIONS)
def test_towers_match_pytorch(built, reference, precision) -> None:
    """Batches of 4 images and 8 captions (the graphs have batch 1: the runner runs rows), text trimmed below 77."""
    pixels, feed, image_ref, text_ref = reference
    assert feed["input_ids"].shape[1] < 77 and feed["input_ids"].dtype == np.int64
    for tower, ref, run_feed, output in (("vision", image_ref, {"pixel_values": pixels}, "image_embeds"), ("text", text_ref, feed, "text_embeds")):
        graph = built[(precision, tower)]
        assert graph.not_built is None and graph.path.is_file(), graph.not_built
        with graph.make_runner() as runner:
            ours = runner.infer(run_feed)[output]
        assert ours.shape == ref.shape and ours.dtype == np.float32
        cosine = np.sum(ours * ref, axis=1) / np.linalg.norm(ours, axis=1)
        assert cosine.min() > MIN_COSINE[precision], (precision, tower, cosine)
        assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-3)
        if precision == "fp32":
            assert np.abs(ours - ref).max() < 1e-4


def test_precisions_and_settings(built) -> None:
    """What each build runs in, and what it records: converter input shapes, quantizer recipe, I/O dtypes."""
    assert {(p, t): b.precision for (p, t), b in built.items()} == {
        ("fp32", "vision"): "fp32", ("fp32", "text"): "fp32", ("fp16", "vision"): "fp16", ("fp16", "text"): "fp16",
        ("dynamic", "vision"): "dynamic", ("dynamic", "text"): "dynamic", ("int8", "vision"): "static", ("int8", "text"): "dynamic",
    }
    vision, text = built[("int8", "vision")].settings, built[("int8", "text")].settings
    assert vision["converter"]["input_shapes"] == {"pixel_values": [1, 224, 224, 3]}
    assert text["converter"]["input_shapes"] == {"input_ids": [1, 77], "attention_mask": [1, 77]}
    assert vision["interpreter"]["io_dtypes"] == {"pixel_values": "float32", "image_embeds": "float32"}
    assert text["interpreter"]["io_dtypes"] == {"input_ids": "int32", "attention_mask": "int32", "text_embeds": "float32"}
    assert vision["interpreter"]["input_shapes"] == {"pixel_values": [1, 3, 224, 224]}  # the contract's NCHW
    # 6 weight ops per block x 10 blocks + the projection: static, except the 10 attention out_proj (dynamic)
    assert vision["quantization"]["fully_connected"] == {"static": 51, "dynamic": 10, "float": 0}
    assert vision["quantization"]["calibration"]["samples"] == 8 and vision["quantization"]["quantization_recipe"]
    assert text["quantization"]["fully_connected"] == {"static": 0, "dynamic": 19, "float": 0}
    size = {k: b.path.stat().st_size for k, b in built.items()}
    assert size[("fp16", "vision")] < 0.55 * size[("fp32", "vision")] and size[("int8", "vision")] < 0.32 * size[("fp32", "vision")]
    assert size[("dynamic", "text")] < 0.3 * size[("fp32", "text")]  # int8 matrices and the int8 token table
    assert built[("int8", "text")].path == built[("dynamic", "text")].path  # one dynamic text graph serves both targets


def test_trimmed_and_single_row_text_feeds(built, job) -> None:
    """Padding a trimmed batch back to 77 gives the full-length embeddings; a row alone gives its row of the batch."""
    family = job.family.clip
    texts = captions(12)[4:]
    with built[("fp32", "text")].make_runner() as runner:
        full = runner.infer(family.text_feed(texts, trim=False))["text_embeds"]
        trimmed = runner.infer(family.text_feed(texts))["text_embeds"]
        alone = runner.infer(family.text_feed(texts[:1]))["text_embeds"]
    assert family.text_feed(texts)["input_ids"].shape[1] < 77
    assert np.abs(full - trimmed).max() < 1e-6 and np.abs(alone[0] - full[0]).max() < 1e-6


def test_generic_runner_reads_the_names_from_the_file(built, reference) -> None:
    """`runner_for_file` on a tower (as `edgekit bench` / `embed-labels` open it) gets the contract's names, int64
    token inputs and padding from the ``.tflite`` signature alone."""
    from edgekit.runners import runner_for_file

    _, feed, _, text_ref = reference
    with runner_for_file(built[("fp32", "text")].path) as runner:
        assert [(m.name, m.shape, m.dtype) for m in runner.inputs] == [("input_ids", (1, 77), np.int64), ("attention_mask", (1, 77), np.int64)]
        assert runner.output_names == ["text_embeds"] and runner.pad_sequences
        assert np.abs(runner.infer(feed)["text_embeds"] - text_ref).max() < 1e-4
    with runner_for_file(built[("fp32", "vision")].path) as runner:
        assert [(m.name, m.shape) for m in runner.inputs] == [("pixel_values", (1, 3, 224, 224))] and runner.output_names == ["image_embeds"]


def test_a_tower_that_cannot_convert_is_not_built(job, graphs, tmp_path) -> None:
    from dataclasses import replace

    from edgekit import progress, registry
    from edgekit.backends import Run
    from edgekit.targets import Target

    class Unsupported(torch.nn.Module):
        def forward(self, pixel_values):
            raise NotImplementedError("an op litert-torch cannot lower")

    graph = replace(graphs["vision"], torch=replace(graphs["vision"].torch, module=Unsupported()))
    built = registry.backend("tflite").build(graph, Target(backend="tflite", precision="fp32"), Run(job.recipe, tmp_path, progress.track))
    assert built.path is None and built.make_runner is None
    # the backend knows graphs, not towers: the reason names the graph
    assert built.not_built.startswith("litert-torch cannot convert the vision graph (NotImplementedError: an op litert-torch cannot lower")
