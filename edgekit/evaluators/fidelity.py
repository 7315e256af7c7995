"""Output fidelity of a candidate model against a reference (e.g. INT8 vs FP32): errors and cosine similarity."""

from __future__ import annotations

import numpy as np

from edgekit.errors import EdgekitError


def _metrics(name: str, ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(cand, dtype=np.float64)
    if a.shape != b.shape:
        raise EdgekitError(f"output {name!r} has shape {b.shape} in the candidate but {a.shape} in the reference", fix="compare models with the same outputs")
    a, b = a.ravel(), b.ravel()
    diff = np.abs(a - b)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    cosine = float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))
    return {"max_abs": float(diff.max(initial=0.0)), "mean_abs": float(diff.mean()) if diff.size else 0.0, "cosine": cosine}


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per reference output name: max_abs, mean_abs and cosine of the flattened arrays (float64).

    Cosine of two all-zero arrays is 1.0; of a zero and a non-zero array 0.0.
    """
    missing = [name for name in reference if name not in candidate]
    if missing:
        raise EdgekitError(f"candidate outputs lack {missing} (has {sorted(candidate)})", fix="compare models with the same output names")
    return {name: _metrics(name, ref, candidate[name]) for name, ref in reference.items()}


def summarize_fidelity(references: list[dict[str, np.ndarray]], candidates: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Worst case over samples and outputs: largest max_abs and mean_abs, smallest cosine (``cosine_min``)."""
    if not references or len(references) != len(candidates):
        raise ValueError(f"need equally many reference and candidate samples (got {len(references)} and {len(candidates)})")
    rows = [m for r, c in zip(references, candidates) for m in compare_outputs(r, c).values()]
    return {
        "max_abs": max(m["max_abs"] for m in rows),
        "mean_abs": max(m["mean_abs"] for m in rows),
        "cosine_min": min(m["cosine"] for m in rows),
        "samples": float(len(references)),
    }
