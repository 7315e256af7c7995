"""Groundwork for the VLM recipe: a tiny LLaVA (CLIP vision tower, MLP projector, Llama decoder with grouped-query
attention) built from a config with random weights; its three ONNX graphs reproduce PyTorch's greedy ``generate``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=499, vision_feature_select_strategy="default", vision_feature_layer=-2)
    torch.manual_seed(0)
    return LlavaForConditionalGeneration._from_config(config, attn_implementation="eager", dtype=torch.float32).eval()


def test_onnx_greedy_generation_matches_pytorch(tiny_llava, tmp_path) -> None:
    from edgekit.models.vlm.generate import greedy_generate
    from edgekit.models.vlm.graphs import CacheLayout, export_llava
    from edgekit.runners.onnxruntime import OnnxRuntimeRunner

    paths = export_llava(tiny_llava, tmp_path)
    layout = CacheLayout.of(tiny_llava.config.text_config)
    assert layout.kv_heads == 2  # grouped-query attention: the cache keeps the model's key/value heads
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompt = [1, 10, 20] + [499] * 16 + [30, 40, 50]  # 16 image tokens: (32 / 8)^2 patches
    ids = torch.tensor([prompt])
    with torch.no_grad():
        expected = tiny_llava.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)[0, len(prompt):].tolist()
    runners = {name: OnnxRuntimeRunner(path) for name, path in paths.items()}
    try:
        tokens = greedy_generate(runners, layout, ids.numpy(), 499, pixels.numpy(), 24)
    finally:
        for runner in runners.values():
            runner.close()
    assert tokens == expected and len(set(tokens)) > 3
