"""The CLIP job on the real TinyCLIP-ViT-8M-16-Text-3M architecture (random weights; no CLIP weights exist here)
with the real CLIP tokenizer, real images and captions, real ONNX Runtime and OpenVINO sessions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from conftest import COCO, REPO, captions


@pytest.fixture(scope="module")
def towers_onnx(clip, tmp_path_factory) -> dict[str, Path]:
    """Both towers exported (dynamic batch, dynamic sequence) and fused by the recipe's default passes."""
    from edgekit.export import export_module
    from edgekit.models.clip.family import TOWERS
    from edgekit.onnx_io import load_onnx, save_onnx
    from edgekit.passes import run_passes

    family, modules = clip
    folder = tmp_path_factory.mktemp("clip")
    out = {}
    for tower in TOWERS:
        raw = export_module(modules[tower.name], family.example_inputs(tower.name), folder / f"{tower.name}_raw.onnx", 17, tower.input_names, (tower.output_name,), tower.dynamic_axes)
        fused, _ = run_passes(load_onnx(raw), ["constant_folding", "fuse_conv_bn", "eliminate_identity", "remove_unused", "onnxslim"])
        out[tower.name] = save_onnx(fused, folder / f"{tower.name}.onnx", {})
    return out


def test_tinyclip_architecture_from_config(clip) -> None:
    family, modules = clip
    vision = sum(p.numel() for p in modules["vision"].vision_model.parameters())
    assert 8.0e6 < vision < 8.3e6  # the "8M" of ViT-8M-16
    assert family.image_size == 224 and modules["text"].text_model.config.num_hidden_layers == 3


def test_towers_match_pytorch_at_dynamic_batch_and_sequence(clip, towers_onnx) -> None:
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    family, modules = clip
    images = sorted((COCO / "images").iterdir())[:3]
    pixels = np.concatenate([family.image_feed(p)["pixel_values"] for p in images])
    with OnnxRuntimeRunner(towers_onnx["vision"]) as runner, torch.no_grad():
        ours = runner.infer({"pixel_values": pixels})["image_embeds"]
        ref = modules["vision"](torch.from_numpy(pixels)).numpy()
    assert ours.shape == (3, 512) and np.abs(ours - ref).max() < 1e-4
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    for texts in (captions(5), ["a dog"], captions(2)):
        feed = family.text_feed(texts)  # trimmed to the longest caption: the sequence axis varies
        with OnnxRuntimeRunner(towers_onnx["text"]) as runner, torch.no_grad():
            ours = runner.infer(feed)["text_embeds"]
            ref = modules["text"](*[torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask")]).numpy()
        assert np.abs(ours - ref).max() < 1e-4


def test_trimmed_padding_does_not_change_text_embeddings(clip, towers_onnx) -> None:
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    family, _ = clip
    texts = captions(4)
    with OnnxRuntimeRunner(towers_onnx["text"]) as runner:
        full = runner.infer(family.text_feed(texts, trim=False))["text_embeds"]
        trimmed = runner.infer(family.text_feed(texts))["text_embeds"]
    assert family.text_feed(texts)["input_ids"].shape[1] < 77
    assert np.abs(full - trimmed).max() < 1e-5


def _optimized_ops(path: Path, tmp_path: Path) -> Counter:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.ort.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def test_fusions_we_rely_on(towers_onnx, tmp_path) -> None:
    """What ORT fuses in these graphs at session creation: the exported erf-GELU becomes one Gelu per block and
    every LayerNorm is one op (opset 17; ORT folds one residual Add of the text tower into a SkipLayerNormalization). Its attention fusion does not match this export (no Attention op): the attention
    runs as MatMul/Softmax, which the report's latency reflects."""
    vision = _optimized_ops(towers_onnx["vision"], tmp_path)
    assert vision["Gelu"] == 10 and vision["Erf"] == 0 and vision["LayerNormalization"] == 22
    assert vision["Attention"] == vision["MultiHeadAttention"] == 0
    text = _optimized_ops(towers_onnx["text"], tmp_path)
    assert text["Gelu"] == 3 and text["Erf"] == 0 and text["LayerNormalization"] + text["SkipLayerNormalization"] == 7


def test_fuse_attention_matches_this_export(clip, towers_onnx, tmp_path) -> None:
    """Our attention fusion turns every attention block of both towers into one MultiHeadAttention (ORT contrib op)
    with the mask as attention bias, and the outputs stay equal."""
    import onnxruntime as ort

    from edgekit.passes import run_passes

    family, _ = clip
    feeds = {"vision": family.image_feed(sorted((COCO / "images").iterdir())[0]), "text": family.text_feed(captions(3))}
    for tower, blocks in (("vision", 10), ("text", 3)):
        model = onnx.load(towers_onnx[tower])
        fused, _ = run_passes(model, ["fuse_attention"])
        ops = Counter(n.op_type for n in fused.graph.node)
        assert ops["MultiHeadAttention"] == blocks and ops["Softmax"] == 0
        a = ort.InferenceSession(model.SerializeToString()).run(None, feeds[tower])[0]
        b = ort.InferenceSession(fused.SerializeToString()).run(None, feeds[tower])[0]
        assert np.abs(a - b).max() < 1e-5, tower
    masked = [n for n in fused.graph.node if n.op_type == "MultiHeadAttention"]
    assert all(len(n.input) == 6 and n.input[5] for n in masked)  # the text tower's causal + padding mask


def test_vision_int8_quantizes_weight_matmuls_only(clip, towers_onnx, tmp_path, calib_images) -> None:
    """Static Q/DQ on the 61 weight MatMuls (6 per block + projection), which ORT runs as MatMulIntegerToFloat;
    LayerNorm, Softmax, GELU, the attention MatMuls and the patch-embedding Conv stay float."""
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner
    from edgekit.quantization.graph import GraphIndex
    from edgekit.quantization.placement import TRANSFORMER_PLACEMENT
    from edgekit.quantization.ptq import quantize_static

    family, _ = clip
    model = onnx.load(towers_onnx["vision"])
    result = quantize_static(model, calib_images[:16], family.image_feed, placement=TRANSFORMER_PLACEMENT)
    index = GraphIndex(result.model)
    for node in result.model.graph.node:
        fed_by_dq = [index.producer[i].op_type == "DequantizeLinear" for i in node.input if i in index.producer]
        if node.op_type in ("LayerNormalization", "Softmax", "Conv") or (node.op_type == "MatMul" and not index.is_constant(node.input[1]) and index.producer.get(node.input[1]) and index.producer[node.input[1]].op_type != "DequantizeLinear"):
            assert not any(fed_by_dq), node.name
    assert result.spec.settings["quantized_nodes"] == 61
    path = tmp_path / "vision_int8.onnx"
    onnx.save(result.model, path)
    assert _optimized_ops(path, tmp_path)["MatMulIntegerToFloat"] == 61
    images = sorted((COCO / "images").iterdir())[:8]
    with OnnxRuntimeRunner(towers_onnx["vision"]) as fp32, OnnxRuntimeRunner(path) as int8:
        cos = [float(np.sum(fp32.infer(f)["image_embeds"] * int8.infer(f)["image_embeds"])) for f in map(family.image_feed, images)]
    assert min(cos) > 0.99


def test_int8_embedding_table(clip, towers_onnx) -> None:
    """The token table as int8 rows: a quarter of its bytes, same embeddings within int8 rounding, only standard ops."""
    import onnxruntime as ort

    from edgekit.quantization.embedding import quantize_embedding_tables

    family, _ = clip
    model = onnx.load(towers_onnx["text"])
    quantized, settings = quantize_embedding_tables(model)
    assert settings["tables"] == ["text_model.embeddings.token_embedding.weight"]
    assert len(quantized.SerializeToString()) < 0.4 * len(model.SerializeToString())  # the 50 MB table -> 12.6 MB; 10 MB of float MatMuls remain
    assert {n.domain for n in quantized.graph.node} <= {""}
    feed = family.text_feed(captions(16))
    a = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    b = ort.InferenceSession(quantized.SerializeToString()).run(None, feed)[0]
    assert np.sum(a * b, axis=1).min() > 0.999


def test_smooth_quant_preserves_the_function(clip, towers_onnx, calib_images) -> None:
    import onnxruntime as ort

    from edgekit.quantization.smooth_quant import smooth_quant

    family, _ = clip
    model = onnx.load(towers_onnx["vision"])
    smoothed, settings = smooth_quant(model, calib_images[:8], family.image_feed, alpha=0.5)
    assert settings["smoothed_layernorms"] == 21  # ln1 and ln2 of 10 blocks, and post_layernorm -> projection
    feed = family.image_feed(calib_images[20])
    a = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    b = ort.InferenceSession(smoothed.SerializeToString()).run(None, feed)[0]
    assert np.abs(a - b).max() < 1e-5
    changed = {i.name for i in smoothed.graph.initializer} - {i.name for i in model.graph.initializer}
    assert len(changed) == 21 * 2 + 41  # LayerNorm scale and bias; q, k, v, fc1 of each block and the projection


def _clip_recipe(tmp_path: Path, targets: list[str], **clip_overrides) -> Path:
    data = yaml.safe_load((REPO / "recipes" / "clip.yaml").read_text())
    data["targets"] = targets
    data["quantization"]["calibration"]["count"] = 16
    data["quantization"]["method"] = "auto"  # the vision tower's ranges chosen label-free (embedding cosine vs FP32)
    data["quantization"]["tuning"] = {"candidates": ["percentile:99.99", "mse", "minmax"]}
    data["clip"]["text_calibration"]["count"] = 32
    data["clip"]["zero_shot"].update(max_images=24, templates=["a photo of a {}.", "a {} in a video game."])
    data["clip"]["retrieval"]["max_images"] = 16
    data["clip"].update(clip_overrides)
    data["benchmark"] = {"warmup": 2, "runs": 5, "threads": 2}
    path = tmp_path / "clip.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    """The CLIP job end to end through the CLI on ORT and OpenVINO, FP32 and INT8, and TensorRT (simulated where it
    cannot run)."""
    from typer.testing import CliRunner

    from edgekit.cli import app

    pytest.importorskip("openvino")
    tmp = tmp_path_factory.mktemp("clip-run")
    recipe = _clip_recipe(tmp, ["onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32", "openvino:int8", "tensorrt:fp16", "tensorrt:int8"])
    result = CliRunner().invoke(app, ["export", str(recipe), "--out", str(tmp / "run")])
    assert result.exit_code == 0, result.output
    return tmp / "run"


def test_clip_run_report(clip_run) -> None:
    from edgekit.reports import load_report

    report = load_report(clip_run / "report.json")
    assert [v.name for v in report.variants][:4] == ["onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32", "openvino:int8"]
    for v in report.variants[:4]:
        assert v.status == "measured" and set(v.components) == {"vision", "text"}
        for name, c in v.components.items():
            assert c.latency_ms.median > 0 and c.size_bytes > 0 and (clip_run / c.model_path).is_file(), (v.name, name)
        for key in ("zero_shot_top1", "zero_shot_top5", "i2t_R@1", "t2i_R@10", "retrieval_mean_recall", "image_embedding_cosine", "text_embedding_cosine", "zero_shot_top1_agreement"):
            assert key in v.metrics, (v.name, key)
    ref, ort_int8 = report.variants[0], report.variants[1]
    assert ref.metrics["image_embedding_cosine"] == 1.0 and ref.metrics["zero_shot_top1_agreement"] == 1.0
    assert ort_int8.components["vision"].precision == "static" and ort_int8.components["text"].precision == "dynamic"
    assert ort_int8.components["vision"].size_bytes < 0.4 * ref.components["vision"].size_bytes
    assert ort_int8.components["text"].size_bytes < 0.3 * ref.components["text"].size_bytes  # int8 MatMuls and token table
    assert ort_int8.metrics["image_embedding_cosine"] > 0.99 and ort_int8.metrics["text_embedding_cosine"] > 0.99
    assert report.variants[3].metrics["image_embedding_cosine"] > 0.98
    md = (clip_run / "report.md").read_text()
    assert "## Per-graph latency and size" in md and "vision median ms" in md
    ranges = report.tuning["graphs"]["vision"]["ranges"]  # method: auto, scored on the 16 calibration images
    assert [c["candidate"] for c in ranges["candidates"]] == ["percentile:99.99", "mse", "minmax"] and ranges["metric"].startswith("output_cosine")
    best = max(ranges["candidates"], key=lambda c: c["score"])
    assert ranges["chosen"] == best["candidate"] and 0.9 < best["score"] <= 1.0
    assert ort_int8.components["vision"].settings["quantization"]["method"] == ranges["chosen"].partition(":")[0]
    assert "### Range method of `vision`" in md


def test_clip_tensorrt_towers(clip_run) -> None:
    """Both towers get TensorRT's transformer placement (weight MatMuls only, symmetric int8, per-channel weights,
    float biases, residual Adds and LayerNorm float), lint clean, a build config whose profile covers the text
    tower's sequence axis, and accuracy simulated on the CPU, gated like any target."""
    import onnx
    from onnx import numpy_helper

    from edgekit.backends.tensorrt.qdq import lint_qdq_for_tensorrt
    from edgekit.quantization.graph import GraphIndex
    from edgekit.reports import load_report

    if _has_tensorrt():
        pytest.skip("TensorRT is installed here: the engines are built and measured instead of simulated")
    report = load_report(clip_run / "report.json")
    variants = {v.name: v for v in report.variants}
    for name in ("tensorrt:fp16", "tensorrt:int8"):
        v = variants[name]
        assert v.status == "simulated" and "latency not measured" in v.simulated_how and set(v.components) == {"vision", "text"}
        assert v.budget and all(b.passed for b in v.budget), v.budget  # the cosines are gated by the recipe's budgets
        assert v.metrics["image_embedding_cosine"] > 0.99 and v.metrics["text_embedding_cosine"] > 0.99, v.metrics
    assert variants["tensorrt:fp16"].metrics["text_embedding_cosine"] > variants["tensorrt:int8"].metrics["text_embedding_cosine"]
    for tower in ("vision", "text"):
        assert variants["tensorrt:int8"].components[tower].precision == "int8"  # the dynamic-int8 text tower got static ranges
        model = onnx.load(clip_run / "tensorrt" / f"{tower}_int8_qdq.onnx")
        assert lint_qdq_for_tensorrt(model) == []
        index = GraphIndex(model)
        dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        consumers = {c.op_type for n in dq for c in index.consumers.get(n.output[0], [])}
        assert consumers - {"Shape"} == {"MatMul"}, consumers  # no Q/DQ reaches an Add, LayerNorm, Softmax or GELU (Shape reads dims only)
        for n in model.graph.node:
            if n.op_type == "QuantizeLinear":
                assert numpy_helper.to_array(index.initializers[n.input[2]]).dtype == np.int8
                assert not numpy_helper.to_array(index.initializers[n.input[2]]).any()  # zero-point 0
        spec = json.loads((clip_run / "tensorrt" / f"{tower}_quant_spec_tensorrt.json").read_text())
        assert spec["settings"]["placement"] == "tensorrt-transformer" and spec["settings"]["bias"] == "float"
        plan = json.loads((clip_run / "tensorrt" / f"{tower}_build_int8.json").read_text())
        assert plan["lint"]["passed"] and "--stronglyTyped" in plan["trtexec"]
        if tower == "text":
            assert plan["config"]["dims"] == {"sequence": {"min": 1, "opt": 77, "max": 77}}  # batch: the recipe's range
            assert "--maxShapes=input_ids:1x77,attention_mask:1x77" in plan["trtexec"]
    from typer.testing import CliRunner

    from edgekit.cli import app

    result = CliRunner().invoke(app, ["check", str(clip_run / "report.json")])
    assert result.exit_code == 0 and "tensorrt:int8" in result.output, result.output


def _has_tensorrt() -> bool:
    from edgekit.backends.tensorrt.builder import tensorrt_available

    return tensorrt_available() is not None


def test_clip_run_label_embeddings(clip_run) -> None:
    emb = np.load(clip_run / "class_embeddings.npy")
    meta = json.loads((clip_run / "class_embeddings.json").read_text())
    assert emb.shape == (1000, 512) and emb.dtype == np.float32 and len(meta["classes"]) == 1000
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5) and meta["classes"][0] == "tench"


def test_clip_check_gates_fidelity(clip_run, tmp_path) -> None:
    """`edgekit check` passes the run, and fails a copy whose INT8 image embeddings lost fidelity."""
    from typer.testing import CliRunner

    from edgekit.cli import app

    result = CliRunner().invoke(app, ["check", str(clip_run / "report.json")])
    assert result.exit_code == 0, result.output
    assert "image_embedding_cosine" in result.output
    data = json.loads((clip_run / "report.json").read_text())
    data["variants"][1]["metrics"]["image_embedding_cosine"] = 0.95
    from edgekit.errors import EdgekitError
    from edgekit.reports import Report, check_report

    ok, lines = check_report(Report.model_validate(data))  # the gate on those numbers
    assert not ok and any(line.startswith("onnxruntime:int8: image_embedding_cosine") and line.endswith("FAIL") for line in lines)
    bad = tmp_path / "report.json"
    bad.write_text(json.dumps(data))
    result = CliRunner().invoke(app, ["check", str(bad)])  # an edited report.json is refused (exit 2 through main)
    assert isinstance(result.exception, EdgekitError) and "digest mismatch" in str(result.exception)


def test_clip_recipe_errors(tmp_path) -> None:
    from edgekit.errors import EdgekitError
    from edgekit.recipe import load_recipe

    data = yaml.safe_load((REPO / "recipes" / "clip.yaml").read_text())
    data["model"]["config"] = None
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(EdgekitError, match="needs `weights`"):
        load_recipe(path)
    data = yaml.safe_load((REPO / "recipes" / "clip.yaml").read_text())
    data["clip"]["zero_shot"]["templates"] = None
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(EdgekitError, match="templates"):
        load_recipe(path)


def test_embed_labels_reproduces_the_run_class_embeddings(clip_run, tmp_path) -> None:
    """`edgekit embed-labels` on the run's text tower gives the rows the run wrote for the same classes and templates."""
    from typer.testing import CliRunner

    from edgekit.cli import app

    meta = json.loads((clip_run / "class_embeddings.json").read_text())
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(meta["classes"][:5]) + "\n")
    args = ["embed-labels", str(clip_run), "--labels", str(labels), "--out", str(tmp_path / "emb.npy")]
    for template in meta["templates"]:
        args += ["--template", template]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ours = np.load(tmp_path / "emb.npy")
    assert ours.shape == (5, 512) and np.abs(ours - np.load(clip_run / "class_embeddings.npy")[:5]).max() < 1e-5
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "already exists" in str(again.exception)
