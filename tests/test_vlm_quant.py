"""Decoder quantization for VLMs: weight-only INT8/INT4 (MatMulNBits, blockwise), the lm_head policy, and
reproducible bytes; measured on the scaled-down SmolVLM decoder with real ORT sessions."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest

pytest.importorskip("transformers")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ops(path) -> dict[str, int]:
    from collections import Counter

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _prefill_logits(path, family, feeds) -> np.ndarray:
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path) as runner:
        return runner.infer(feeds)["logits"][0]


@pytest.fixture(scope="module")
def decoder(vlm_export):
    family, model, paths = vlm_export["idefics3"]
    layout = family.layout
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 49000, (1, 12))
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    with OnnxRuntimeRunner(paths["embed"]) as embed:
        embeds = embed.infer({"input_ids": ids})["inputs_embeds"]
    feeds = {"inputs_embeds": embeds, "attention_mask": np.ones((1, 12), np.int64), "position_ids": np.arange(12)[None],
             **layout.empty()}
    return family, paths["decoder"], feeds


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_replaces_every_weight_matmul(decoder, tmp_path, bits) -> None:
    from edgekit.quantization.weight_only import quantize_weight_only, weight_matmuls

    family, fp32, feeds = decoder
    weight_count = len(weight_matmuls(onnx.load(str(fp32))))
    assert weight_count == 4 * 7 + 1  # q, k, v, o, gate, up, down per layer + lm_head
    out = tmp_path / f"int{bits}.onnx"
    settings = quantize_weight_only(fp32, out, bits, 32, True, 4)
    ops = _ops(out)
    assert ops["MatMulNBits"] == weight_count and settings["quantized_matmuls"] == weight_count
    assert ops["MatMul"] == 2 * 4  # attention scores and attention x V stay float
    nbits = next(n for n in onnx.load(str(out)).graph.node if n.op_type == "MatMulNBits")
    assert {a.name: a.i for a in nbits.attribute}["bits"] == bits and {a.name: a.i for a in nbits.attribute}["block_size"] == 32
    ref, got = _prefill_logits(fp32, family, feeds), _prefill_logits(out, family, feeds)
    cos = np.sum(ref * got, -1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() > (0.999 if bits == 8 else 0.95)
    assert out.stat().st_size < fp32.stat().st_size * (0.35 if bits == 8 else 0.2)


def test_weight_only_is_byte_identical_across_runs(decoder, tmp_path) -> None:
    from edgekit.quantization.weight_only import quantize_weight_only

    _, fp32, _ = decoder
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    quantize_weight_only(fp32, a, 4, 32)
    quantize_weight_only(fp32, b, 4, 32)
    assert _sha(a) == _sha(b)


def test_lm_head_kept_float_when_excluded(decoder, tmp_path) -> None:
    from edgekit.quantization.weight_only import output_matmuls, quantize_weight_only

    _, fp32, _ = decoder
    head = output_matmuls(onnx.load(str(fp32)), "logits")
    assert head == ["/lm_head/MatMul"]
    out = tmp_path / "int4_head_float.onnx"
    quantize_weight_only(fp32, out, 4, 32, exclude=head)
    graph = onnx.load(str(out)).graph
    assert any(n.name == head[0] and n.op_type == "MatMul" for n in graph.node)
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) == 28
