"""QAT on a transformer: the real all-MiniLM-L6-v2 weights with static Q/DQ on every float op (the placement PTQ
cannot hold: embedding cosine about 0.85). The fake-quant graph must reproduce ONNX Runtime's reference kernels
exactly before training, the export must carry what it trained, and a short label-free distillation on captions of
the calibration images must raise the cosine on captions of the evaluation images.

"Reproduce" is as exact as a chaotic graph allows: torch's and ONNX Runtime's float MatMuls sum in another order,
so now and then a value lands on the other side of a rounding step, and with every op quantized one flipped step
moves the embedding visibly. Measured on 24 evaluation captions: two thirds bit-identical, mean cosine 0.995."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import ASSETS
from test_minilm_int8 import minilm  # noqa: F401  (module fixture: the real weights exported to ONNX once)

from edgekit.qat.distill import QatSettings, embedding_loss, norm_outputs, train
from edgekit.qat.graph import QdqGraph

CAPTIONS = ASSETS / "coco_val2017_subset" / "annotations" / "captions_val2017_subset.json"


def _captions(folder: str) -> list[str]:
    from edgekit.evaluators.retrieval import load_coco_captions

    coco = ASSETS / "coco_val2017_subset"
    return load_coco_captions(CAPTIONS, [coco / folder])[1]


def _session(path, optimize: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    if not optimize:  # ONNX Runtime's reference kernels: each DequantizeLinear, float op and QuantizeLinear as written
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _agreement(graph: QdqGraph, session, tokenize, texts) -> tuple[float, float]:
    """(share of sentences whose embedding is bit-identical, mean cosine) of the fake-quant graph against ``session``."""
    exact, cos = [], []
    for text in texts:
        feeds = tokenize(text)
        with torch.no_grad():
            ours = graph(*(torch.from_numpy(feeds[n]) for n in graph.inputs))[0].numpy()[0]
        theirs = session.run(None, feeds)[0][0]
        exact.append(bool(np.array_equal(ours, theirs)))
        cos.append(float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs))))
    return float(np.mean(exact)), float(np.mean(cos))


def _cosines(session, reference, tokenize, texts) -> np.ndarray:
    out = []
    for text in texts:
        feeds = tokenize(text)
        a, b = session.run(None, feeds)[0][0], reference.run(None, feeds)[0][0]
        out.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return np.array(out)


@pytest.fixture(scope="module")
def full_static(minilm):  # noqa: F811
    bench, tokenizer, _, fp32, folder = minilm
    path = folder / "full_static.onnx"
    bench.quantize_static_text(onnx.load(str(fp32)), path, tokenizer, _captions("calib_images")[:64], "full", None, 2)
    return bench, tokenizer, fp32, path


def test_fake_quant_graph_reproduces_onnx_runtime_on_a_transformer(full_static):
    bench, tokenizer, _, path = full_static
    model = onnx.load(str(path))
    graph = QdqGraph(model)
    assert len(graph.weights) == 36 and len(graph.float_params) > 0  # every weight MatMul; biases and norms train too
    tokenize = lambda text: bench.tokenize(tokenizer, [text])  # noqa: E731
    exact, cosine = _agreement(graph, _session(path, optimize=False), tokenize, _captions("images")[:24])
    assert exact >= 0.4 and cosine >= 0.98, (exact, cosine)


def test_qat_raises_full_static_int8_cosine_on_held_out_captions(full_static, tmp_path):
    bench, tokenizer, fp32, path = full_static
    tokenize = lambda text: bench.tokenize(tokenizer, [text])  # noqa: E731
    model = onnx.load(str(path))
    settings = QatSettings(steps=32, lr=1e-4, scale_lr=1e-4, batch=4, flip=False, threads=2, checkpoint_every=16)
    features = norm_outputs(model, onnx.load(str(fp32)))
    assert len(features) == 13  # the embedding LayerNorm and two per block
    result = train(model, fp32, _captions("calib_images"), tokenize, settings, embedding_loss, tmp_path / "ckpt", features=features)
    trained = tmp_path / "qat.onnx"
    onnx.save(result.model, str(trained))
    held_out = _captions("images")[:48]
    reference = _session(fp32)
    before = _cosines(_session(path), reference, tokenize, held_out)
    after = _cosines(_session(trained), reference, tokenize, held_out)
    assert after.mean() > before.mean() + 0.02, (before.mean(), after.mean())
    # the export carries what was trained: ORT's reference kernels agree with the trained fake-quant graph
    exact, cosine = _agreement(QdqGraph(result.model), _session(trained, optimize=False), tokenize, held_out[:24])
    assert exact >= 0.4 and cosine >= 0.98, (exact, cosine)


def test_clip_export_with_full_int8_towers_and_qat(tmp_path):
    """``clip.vision_int8: full``, ``text_int8: static`` with ``quantization.mode: qat`` through the CLI: vision gets
    static Q/DQ on every float op, text on its weight MatMuls; both are distilled on their own calibration samples
    (images, captions), and the record says so."""
    import json

    import yaml
    from conftest import edgekit
    from test_clip import _clip_recipe

    path = _clip_recipe(tmp_path, ["onnxruntime:fp32", "onnxruntime:int8"], vision_int8="full", text_int8="static")
    data = yaml.safe_load(path.read_text())
    data["quantization"]["method"] = "percentile"
    data["quantization"].pop("tuning")
    data["quantization"]["mode"] = "qat"
    data["quantization"]["qat"] = {"steps": 4, "batch": 2, "lr": 1e-5, "count": 8}
    path.write_text(yaml.safe_dump(data))
    result = edgekit("export", str(path), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    int8 = next(v for v in report["variants"] if v["name"] == "onnxruntime:int8")
    for tower, samples in (("vision", 8), ("text", 8)):
        record = report["tuning"]["graphs"][tower]["qat"]
        assert record["images"] == samples and record["reaches"] == ["onnxruntime:int8"], record
        assert (record["features"] > 0) == (tower == "vision")  # text: its LayerNorms stay float, nothing to tap
        settings = int8["components"][tower]["settings"]["quantization"]
        assert settings["qat_training"]["settings"]["steps"] == 4, settings.keys()
        assert settings["placement"] == ("transformer-full" if tower == "vision" else "transformer"), settings["placement"]
    assert int8["metrics"]["image_embedding_cosine"] > 0.95
