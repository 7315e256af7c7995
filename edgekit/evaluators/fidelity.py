"""Output fidelity of a candidate model against a reference (e.g. INT8 vs FP32): errors and cosine similarity."""

from __future__ import annotations

import numpy as np


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per output name: max_abs, mean_abs and cosine of the flattened arrays (float64)."""
    out = {}
    for name, ref in reference.items():
        a = np.asarray(ref, dtype=np.float64).ravel()
        b = np.asarray(candidate[name], dtype=np.float64).ravel()
        diff = np.abs(a - b)
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        cosine = float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))
        out[name] = {"max_abs": float(diff.max(initial=0.0)), "mean_abs": float(diff.mean()) if diff.size else 0.0, "cosine": cosine}
    return out


def summarize_fidelity(references: list[dict[str, np.ndarray]], candidates: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Worst case over samples and outputs: largest errors, smallest cosine."""
    rows = [m for r, c in zip(references, candidates) for m in compare_outputs(r, c).values()]
    return {
        "max_abs": max(m["max_abs"] for m in rows),
        "mean_abs": float(np.mean([m["mean_abs"] for m in rows])),
        "cosine_min": min(m["cosine"] for m in rows),
        "samples": float(len(references)),
    }
