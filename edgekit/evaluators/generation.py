"""Fidelity of generated text to a reference model (FP32), from greedy generations.

Per step metrics come from teacher forcing: the variant is fed the reference's tokens, so step ``t`` of both models
sees the same prefix and their next-token logits can be compared directly.

* ``token_agreement``: share of steps where the variant's argmax equals the reference token;
* ``logit_cosine`` (mean, and ``_min``): cosine of the two logit vectors per step;
* ``logit_kl`` (mean, and ``_max``): KL(reference || variant) of the next-token distributions per step, in nats;
* ``exact_match``: share of prompts whose free-running greedy output equals the reference's;
* ``prefix_agreement``: mean share of the reference output reproduced before the first differing token.
"""

from __future__ import annotations

import numpy as np


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def step_kl(reference: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """KL(softmax(reference) || softmax(variant)) per row, in nats."""
    p, q = _log_softmax(reference), _log_softmax(variant)
    return np.maximum((np.exp(p) * (p - q)).sum(axis=-1), 0.0)


def step_cosine(reference: np.ndarray, variant: np.ndarray) -> np.ndarray:
    a, b = reference.astype(np.float64), variant.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def generation_fidelity(reference: list, forced: list, free: list) -> dict[str, float]:
    """Metrics above from the reference's free generations (with logits), the variant's teacher-forced ones (with
    logits) and the variant's free ones, all over the same prompts in the same order."""
    if not (len(reference) == len(forced) == len(free)) or not reference:
        raise ValueError("reference, forced and free generations must cover the same non-empty prompt set")
    agree, cos, kl = [], [], []
    for ref, var in zip(reference, forced):
        steps = min(len(ref.tokens), len(var.tokens))
        agree.extend(np.asarray(var.tokens[:steps]) == np.asarray(ref.tokens[:steps]))
        cos.extend(step_cosine(ref.logits[:steps], var.logits[:steps]))
        kl.extend(step_kl(ref.logits[:steps], var.logits[:steps]))
    prefixes = [common_prefix(r.tokens, f.tokens) / max(len(r.tokens), 1) for r, f in zip(reference, free)]
    return {
        "token_agreement": float(np.mean(agree)),
        "logit_cosine": float(np.mean(cos)),
        "logit_cosine_min": float(np.min(cos)),
        "logit_kl": float(np.mean(kl)),
        "logit_kl_max": float(np.max(kl)),
        "exact_match": float(np.mean([r.tokens == f.tokens for r, f in zip(reference, free)])),
        "prefix_agreement": float(np.mean(prefixes)),
        "steps": float(len(agree)),
    }
