"""CLIP zero-shot classification: prompt-ensembled class embeddings, top-k accuracy and agreement between models.

Ties follow the stable rule of :mod:`edgekit.evaluators.retrieval`: among equal logits the lower class index
ranks first (``np.argmax`` / ``np.argsort(-logits, kind="stable")``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from edgekit.evaluators.retrieval import stable_rank


def class_embeddings(encode_text: Callable[[list[str]], np.ndarray], classnames: list[str], templates: list[str],
                     batch_size: int = 256, progress: Callable[[str, int], Iterable[int]] | None = None) -> np.ndarray:
    """OpenAI prompt ensembling: per class, encode ``template.format(name)`` for every template (``encode_text``
    returns L2-normalized rows), average over templates and renormalize. Returns (C, D) float32.

    All prompts are flattened and encoded in chunks of ``batch_size``; ``progress(label, n)`` (e.g.
    :func:`edgekit.progress.track`) iterates over the chunk indices.
    """
    if not classnames or not templates:
        raise ValueError(f"need at least one class name and one template (got {len(classnames)} and {len(templates)})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive (got {batch_size})")
    prompts = [template.format(name) for name in classnames for template in templates]
    n_batches = -(-len(prompts) // batch_size)
    steps = progress("encoding class prompts", n_batches) if progress is not None else range(n_batches)
    chunks = []
    for b in steps:
        batch = prompts[b * batch_size:(b + 1) * batch_size]
        emb = np.asarray(encode_text(batch), dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(batch):
            raise ValueError(f"encode_text returned shape {emb.shape} for {len(batch)} prompts")
        chunks.append(emb)
    mean = np.concatenate(chunks).reshape(len(classnames), len(templates), -1).mean(axis=1)
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return (mean / np.maximum(norm, 1e-12)).astype(np.float32)


def zero_shot_scores(image_emb: np.ndarray, class_emb: np.ndarray) -> np.ndarray:
    """Logits (N, C) = ``image_emb @ class_emb.T`` (cosine similarities for normalized rows; no temperature)."""
    return np.asarray(image_emb) @ np.asarray(class_emb).T


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``zero_shot_top{k}``: fraction of rows whose label ranks within the top ``k`` logits."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"need (N, C) logits and N integer labels (got {logits.shape} and {labels.dtype} {labels.shape})")
    if not labels.size:
        raise ValueError("need at least one row")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]})")
    ranks = stable_rank(logits, labels[:, None] == np.arange(logits.shape[1])[None, :])
    return {f"zero_shot_top{k}": float((ranks < k).mean()) for k in ks}


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise ValueError(f"need two non-empty (N, C) logit arrays of equal shape (got {a.shape} and {b.shape})")
    return a, b


def prediction_agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Fraction of rows where both models predict the same class (top-1 agreement)."""
    a, b = _check_pair(logits_a, logits_b)
    return float((a.argmax(axis=1) == b.argmax(axis=1)).mean())


def topk_overlap(logits_a: np.ndarray, logits_b: np.ndarray, k: int = 5) -> float:
    """Mean over rows of ``|topk_a ∩ topk_b| / k``."""
    a, b = _check_pair(logits_a, logits_b)
    if not 1 <= k <= a.shape[1]:
        raise ValueError(f"k must lie in [1, {a.shape[1]}] (got {k})")
    top_a = np.argsort(-a, axis=1, kind="stable")[:, :k]
    top_b = np.argsort(-b, axis=1, kind="stable")[:, :k]
    common = (top_a[:, :, None] == top_b[:, None, :]).any(axis=2).sum(axis=1)
    return float((common / k).mean())
