"""The three VLM graphs (vision + projector, embedding, KV-cache decoder) against PyTorch, for LLaVA (CLIP vision,
MLP projector, Llama or Qwen2 decoder with grouped-query attention) and SmolVLM/Idefics3 (SigLIP vision, pixel
shuffle, image splitting), built from configs with random weights: greedy ONNX generation reproduces PyTorch's
``generate`` token for token on real COCO images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import COCO

pytest.importorskip("transformers")

IMAGES = sorted((COCO / "images").glob("*.jpg"))[:3]


def _runners(paths):
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    runners = {name: OnnxRuntimeRunner(path) for name, path in paths.items()}
    for runner in runners.values():
        runner.load()
    return runners


def _torch_pixels(family, pixels):
    pixels = torch.from_numpy(pixels)
    return pixels[None] if family.arch.name == "idefics3" else pixels  # Idefics3 takes (batch, images, 3, S, S)


@pytest.fixture(scope="module")
def tiny_llava_llama():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=499, vision_feature_select_strategy="default", vision_feature_layer=-2)
    torch.manual_seed(0)
    return LlavaForConditionalGeneration._from_config(config, attn_implementation="eager", dtype=torch.float32).eval()


def test_llava_llama_greedy_generation_matches_pytorch(tiny_llava_llama, tmp_path) -> None:
    from edgekit.models.vlm.architectures import LLAVA
    from edgekit.models.vlm.generate import greedy_generate
    from edgekit.models.vlm.graphs import CacheLayout, export_vlm

    paths = export_vlm(tiny_llava_llama, LLAVA, tmp_path)
    layout = CacheLayout.of(tiny_llava_llama.config.text_config)
    assert layout.kv_heads == 2  # grouped-query attention: the cache keeps the model's key/value heads
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prompt = [1, 10, 20] + [499] * 16 + [30, 40, 50]  # 16 image tokens: (32 / 8)^2 patches
    ids = torch.tensor([prompt])
    with torch.no_grad():
        expected = tiny_llava_llama.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)[0, len(prompt):].tolist()
    runners = _runners(paths)
    try:
        tokens = greedy_generate(runners, layout, ids.numpy(), 499, pixels.numpy(), 24)
    finally:
        for runner in runners.values():
            runner.close()
    assert tokens == expected and len(set(tokens)) > 3


@pytest.mark.parametrize("arch", ["idefics3", "llava"])
def test_recipe_architectures_generate_like_pytorch_on_coco(vlm_export, arch) -> None:
    from edgekit.models.vlm.generate import generate

    family, model, paths = vlm_export[arch]
    runners = _runners(paths)
    try:
        for image in IMAGES:
            ids, pixels = family.inputs(image, "Describe the image.")
            with torch.no_grad():
                expected = model.generate(input_ids=torch.from_numpy(ids), pixel_values=_torch_pixels(family, pixels), attention_mask=torch.ones(ids.shape, dtype=torch.int64),
                                          max_new_tokens=24, do_sample=False, eos_token_id=None)[0, ids.shape[1]:].tolist()
            result = generate(runners, family.layout, ids, family.image_token_id, pixels, 24)
            assert result.tokens == expected
            assert result.ttft_s > 0 and result.decode_tokens_per_s > 0
    finally:
        for runner in runners.values():
            runner.close()


def test_idefics3_vision_graph_equals_get_image_features(vlm_export) -> None:
    """Image splitting gives tiles (+ a global view); the exported graph (position ids 0..N-1) equals transformers'
    bucketized-position path with its patch mask, tile for tile."""
    family, model, paths = vlm_export["idefics3"]
    ids, pixels = family.inputs(IMAGES[0], "hi")
    assert pixels.shape[0] == 5  # 640x480 -> 128x96 -> 2x2 tiles of 64 + the global image
    assert int((ids == family.image_token_id).sum()) == 5 * 16  # image_seq_len 16 per tile (8x8 patches, shuffle 2)
    runners = _runners({"vision": paths["vision"]})
    with torch.no_grad():
        expected = model.model.get_image_features(torch.from_numpy(pixels)[None]).pooler_output[0].numpy()
    got = runners["vision"].infer({"pixel_values": pixels})["image_features"]
    runners["vision"].close()
    np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e-5)


def test_decoder_keeps_grouped_query_cache_and_dynamic_axes(vlm_export) -> None:
    import onnx

    for arch in ("idefics3", "llava"):
        family, model, paths = vlm_export[arch]
        graph = onnx.load(paths["decoder"]).graph
        past = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input if i.name.startswith("past_key_values")}
        assert len(past) == 2 * model.config.text_config.num_hidden_layers
        assert all(dims == ["batch", 2, "past", 32] for dims in past.values())  # 2 KV heads of 32, not 4 query heads


def test_prompt_formats_chat_template_and_fallback(vlm_export) -> None:
    smol, _, _ = vlm_export["idefics3"]
    llava, _, _ = vlm_export["llava"]
    assert smol.prompt_text("Hi?") == "User:<image>Hi?<end_of_utterance>\nAssistant:"  # the folder's chat template
    assert llava.prompt_text("Hi?") == "USER: <image>\nHi? ASSISTANT:"  # no template: the architecture's format
    ids, pixels = llava.inputs(None, "Hi?")
    assert pixels is None and llava.image_token_id not in ids


def test_run_folder_round_trip(vlm_export, tmp_path) -> None:
    from edgekit.models.vlm.family import VlmFamily

    for arch in ("idefics3", "llava"):
        family, _, _ = vlm_export[arch]
        family.save(tmp_path / arch)
        again = VlmFamily.from_run(tmp_path / arch)
        a, b = family.inputs(IMAGES[1], "What is this?"), again.inputs(IMAGES[1], "What is this?")
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert (again.image_token_id, again.eos_token_ids, again.layout) == (family.image_token_id, family.eos_token_ids, family.layout)
