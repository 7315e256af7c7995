"""Generation fidelity (token agreement, logit cosine/KL per step, exact match, prefix agreement) and captioning
metrics (BLEU, CIDEr-D) on known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgekit.evaluators.generation import common_prefix, generation_fidelity, step_kl
from edgekit.models.vlm.generate import Generation


def _gen(tokens, logits=None) -> Generation:
    return Generation(list(tokens), 0.01, 0.01, None if logits is None else np.asarray(logits, np.float32))


def test_identical_generations_are_perfect() -> None:
    logits = np.random.default_rng(0).standard_normal((4, 10))
    ref = [_gen([1, 2, 3, 4], logits)]
    fid = generation_fidelity(ref, ref, ref)
    assert fid["token_agreement"] == 1 and fid["exact_match"] == 1 and fid["prefix_agreement"] == 1
    assert fid["logit_cosine"] == pytest.approx(1) and fid["logit_kl"] == pytest.approx(0, abs=1e-12)


def test_known_kl_and_cosine() -> None:
    # p = (1/2, 1/2), q = (3/4, 1/4): KL(p||q) = 1/2 ln(2/3) + 1/2 ln 2
    assert step_kl(np.array([[0.0, 0.0]]), np.array([[math.log(3), 0.0]]))[0] == pytest.approx(0.5 * math.log(2 / 3) + 0.5 * math.log(2))
    ref = [_gen([0, 0], [[1.0, 0.0], [1.0, 0.0]])]
    forced = [_gen([0, 1], [[1.0, 0.0], [0.0, 1.0]])]  # step 2: orthogonal logits, different argmax
    fid = generation_fidelity(ref, forced, [_gen([0, 1])])
    assert fid["token_agreement"] == 0.5
    assert fid["logit_cosine"] == pytest.approx(0.5) and fid["logit_cosine_min"] == pytest.approx(0.0)
    assert fid["exact_match"] == 0 and fid["prefix_agreement"] == 0.5
    p = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
    q = p[::-1]
    kl_step2 = float(np.sum(p * np.log(p / q)))
    assert fid["logit_kl"] == pytest.approx(kl_step2 / 2) and fid["logit_kl_max"] == pytest.approx(kl_step2)


def test_prefix_and_length_mismatch() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix([], [1]) == 0
    ref = [_gen([5, 6, 7, 8], np.eye(9)[[5, 6, 7, 8]]), _gen([1, 2], np.eye(9)[[1, 2]])]
    forced = [_gen([5, 6, 7, 8], np.eye(9)[[5, 6, 7, 8]]), _gen([1, 2], np.eye(9)[[1, 2]])]
    free = [_gen([5, 6, 0]), _gen([1, 2])]  # the first stopped early (EOS) after 2 of 4 tokens
    fid = generation_fidelity(ref, forced, free)
    assert fid["exact_match"] == 0.5 and fid["prefix_agreement"] == pytest.approx((2 / 4 + 1) / 2)
    with pytest.raises(ValueError):
        generation_fidelity(ref, forced[:1], free)


pycocoevalcap = pytest.importorskip("pycocoevalcap")


def test_bleu_papineni_modified_precision() -> None:
    """Papineni et al. 2002: "the the the the the the the" against two references has modified unigram
    precision 2/7 (BLEU-1, candidate longer than the closest reference: no brevity penalty)."""
    from edgekit.evaluators.captioning import caption_scores

    scores = caption_scores({"a": "the the the the the the the"}, {"a": ["The cat is on the mat.", "There is a cat on the mat."]})
    assert scores["bleu1"] == pytest.approx(2 / 7, rel=1e-6)


def test_identical_and_disjoint_captions() -> None:
    from edgekit.evaluators.captioning import caption_scores

    refs = {"a": ["a man riding a wave on a surfboard"] * 2, "b": ["two dogs play in the snow"] * 2, "c": ["a red bus on a city street"] * 2}
    perfect = caption_scores({k: v[0] for k, v in refs.items()}, refs)
    assert perfect["bleu4"] == pytest.approx(1, abs=1e-6)
    assert perfect["cider"] == pytest.approx(10, abs=1e-6)  # CIDEr-D: 10 x mean n-gram cosine 1, no length penalty
    nothing = caption_scores({"a": "purple elephants", "b": "quantum flux", "c": "hello world"}, refs)
    assert nothing["bleu4"] == pytest.approx(0, abs=1e-6) and nothing["cider"] == 0


def test_caption_tokenizer_drops_punctuation_like_ptb() -> None:
    from edgekit.evaluators.captioning import tokenize

    assert tokenize("A man's dog, running!  Fast...") == "a man's dog running fast"
