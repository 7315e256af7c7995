"""Greedy generation over the exported graphs (embed, vision, decoder with KV cache), outputs bound by name."""

from __future__ import annotations

import numpy as np

from edgekit.models.vlm.graphs import CacheLayout


def greedy_generate(runners: dict, layout: CacheLayout, input_ids: np.ndarray, image_token_id: int, pixel_values: np.ndarray | None, max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
    """Tokens after ``input_ids`` (batch 1): image features replace the image tokens, then one decoder call per token."""
    embeds = runners["embed"].infer({"input_ids": input_ids})["inputs_embeds"]
    if pixel_values is not None:
        features = runners["vision"].infer({"pixel_values": pixel_values})["image_features"]
        slots = input_ids[0] == image_token_id
        embeds[0, slots] = features.reshape(-1, features.shape[-1])[: int(slots.sum())]
    past = {n: np.zeros((1, layout.kv_heads, 0, layout.head_dim), np.float32) for n in layout.past_names()}
    total, tokens = input_ids.shape[1], []
    positions = np.arange(total, dtype=np.int64)[None]
    for _ in range(max_new_tokens):
        out = runners["decoder"].infer({"inputs_embeds": embeds, "attention_mask": np.ones((1, total), np.int64), "position_ids": positions, **past})
        token = int(out["logits"][0, -1].argmax())
        tokens.append(token)
        if eos_token_id is not None and token == eos_token_id:
            break
        past = {p: out[q] for p, q in zip(layout.past_names(), layout.present_names())}
        embeds = runners["embed"].infer({"input_ids": np.array([[token]], np.int64)})["inputs_embeds"]
        total += 1
        positions = np.array([[total - 1]], np.int64)
    return tokens
