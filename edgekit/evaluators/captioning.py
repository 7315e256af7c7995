"""Captioning quality against COCO reference captions: BLEU-4 and CIDEr-D from the COCO caption evaluation code
(``pycocoevalcap``'s ``Bleu`` and ``Cider`` scorers; install ``edgekit[vlm]``).

The official pipeline tokenizes with Stanford's PTB tokenizer (Java). :func:`tokenize` stands in for it without
Java: lower case, words and numbers kept with in-word apostrophes, punctuation dropped, as the PTB step does for
plain captions. Scores are therefore comparable with, not identical to, leaderboard numbers.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def caption_scores(candidates: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """``{"bleu4", "bleu1", "cider"}`` of one candidate caption per key against that key's reference captions."""
    from edgekit.optional import require

    Bleu = require("pycocoevalcap.bleu.bleu", "vlm", "captioning metrics").Bleu
    Cider = require("pycocoevalcap.cider.cider", "vlm", "captioning metrics").Cider
    keys = sorted(candidates)
    if not keys or any(k not in references or not references[k] for k in keys):
        raise ValueError("every candidate needs at least one reference caption")
    res = {k: [tokenize(candidates[k])] for k in keys}
    gts = {k: [tokenize(r) for r in references[k]] for k in keys}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu1": float(bleu[0]), "bleu4": float(bleu[3]), "cider": float(cider)}
