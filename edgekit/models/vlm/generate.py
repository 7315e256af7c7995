"""Greedy generation over the exported graphs (embed, vision, decoder with KV cache), outputs bound by name.

The decoder graph serves both phases: prefill (the whole prompt, empty past) and decode (one token, the cache so
far). Time to first token covers embedding, vision and prefill; decode speed covers the later steps only.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from edgekit.models.vlm.graphs import CacheLayout


@dataclass
class Generation:
    tokens: list[int]
    ttft_s: float
    decode_s: float  # all decode steps after the first token
    logits: np.ndarray | None = None  # (steps, vocab) float32 last-position logits, when kept

    @property
    def decode_tokens_per_s(self) -> float:
        steps = len(self.tokens) - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else float("nan")


def prompt_embeddings(runners: dict, input_ids: np.ndarray, image_token_id: int, pixel_values: np.ndarray | None) -> np.ndarray:
    """Token embeddings of the prompt with the image features in the image-token slots (batch 1)."""
    embeds = runners["embed"].infer({"input_ids": input_ids})["inputs_embeds"]
    slots = input_ids[0] == image_token_id
    if pixel_values is not None and slots.any():
        features = runners["vision"].infer({"pixel_values": pixel_values})["image_features"]
        features = features.reshape(-1, features.shape[-1])
        if features.shape[0] != int(slots.sum()):
            raise ValueError(f"the vision graph gave {features.shape[0]} image features for {int(slots.sum())} image tokens in the prompt")
        embeds[0, slots] = features
    return embeds


def generate(
    runners: dict,
    layout: CacheLayout,
    input_ids: np.ndarray,
    image_token_id: int,
    pixel_values: np.ndarray | None,
    max_new_tokens: int,
    eos_token_ids: Collection[int] = (),
    forced: list[int] | None = None,
    keep_logits: bool = False,
    on_token=None,
) -> Generation:
    """Greedy tokens after ``input_ids`` (batch 1). With ``forced`` (teacher forcing) the decoder is fed those tokens
    instead of its own choices, so the logits of every step can be compared with another model's on equal terms."""
    steps = len(forced) if forced is not None else max_new_tokens
    start = time.perf_counter()
    embeds = prompt_embeddings(runners, input_ids, image_token_id, pixel_values)
    past = layout.empty()
    total, tokens, kept = input_ids.shape[1], [], []
    positions = np.arange(total, dtype=np.int64)[None]
    ttft = 0.0
    for step in range(steps):
        out = runners["decoder"].infer({"inputs_embeds": embeds, "attention_mask": np.ones((1, total), np.int64), "position_ids": positions, **past})
        last = out["logits"][0, -1]
        token = int(last.argmax())
        if step == 0:
            ttft = time.perf_counter() - start
        tokens.append(token)
        if keep_logits:
            kept.append(np.asarray(last, np.float32))
        if on_token is not None:
            on_token(token)
        fed = forced[step] if forced is not None else token
        if forced is None and token in eos_token_ids:
            break
        if step == steps - 1:
            break
        past = {p: out[q] for p, q in zip(layout.past_names(), layout.present_names())}
        embeds = runners["embed"].infer({"input_ids": np.array([[fed]], np.int64)})["inputs_embeds"]
        total += 1
        positions = np.array([[total - 1]], np.int64)
    decode = time.perf_counter() - start - ttft
    return Generation(tokens, ttft, decode, np.stack(kept) if kept else None)


def greedy_generate(runners: dict, layout: CacheLayout, input_ids: np.ndarray, image_token_id: int, pixel_values: np.ndarray | None, max_new_tokens: int, eos_token_ids: Collection[int] = ()) -> list[int]:
    """The greedy tokens only (see :func:`generate`)."""
    return generate(runners, layout, input_ids, image_token_id, pixel_values, max_new_tokens, eos_token_ids).tokens


def teacher_forced(runners: dict, layout: CacheLayout, input_ids: np.ndarray, image_token_id: int, pixel_values: np.ndarray | None,
                   max_new_tokens: int) -> tuple[dict[str, np.ndarray], int, dict[str, np.ndarray]]:
    """(prefill feed, first, decode feed) for label-free decoder tuning: the prompt followed by these runners' own
    greedy continuation, as one prefill, whose logits from position ``first`` on predict that continuation; and one
    decode step (the continuation's first token after the prompt's cache), what generation repeats, for timing."""
    tokens = greedy_generate(runners, layout, input_ids, image_token_id, pixel_values, max_new_tokens)
    prompt = prompt_embeddings(runners, input_ids, image_token_id, pixel_values)
    n = input_ids.shape[1]
    continuation = runners["embed"].infer({"input_ids": np.array([tokens[:-1]], np.int64)})["inputs_embeds"] if len(tokens) > 1 else prompt[:, :0]
    embeds = np.concatenate([prompt, continuation], axis=1)
    total = embeds.shape[1]
    feed = {"inputs_embeds": embeds, "attention_mask": np.ones((1, total), np.int64), "position_ids": np.arange(total, dtype=np.int64)[None],
            **layout.empty()}
    out = runners["decoder"].infer({"inputs_embeds": prompt, "attention_mask": np.ones((1, n), np.int64),
                                    "position_ids": np.arange(n, dtype=np.int64)[None], **layout.empty()})
    step = {"inputs_embeds": runners["embed"].infer({"input_ids": np.array([[tokens[0]]], np.int64)})["inputs_embeds"],
            "attention_mask": np.ones((1, n + 1), np.int64), "position_ids": np.array([[n]], np.int64),
            **{p: out[q] for p, q in zip(layout.past_names(), layout.present_names())}}
    return feed, n - 1, step
