"""Tuning: label-free metrics that choose quantization settings on images disjoint from the evaluation set."""

from edgekit.tuning.proxy import (
    DEFAULT_PSEUDO_CONF,
    TuningSet,
    box_agreement,
    check_disjoint,
    embedding_cosine,
    output_cosine,
    pseudo_map,
    score_cosine,
    topk_agreement,
)

__all__ = [
    "DEFAULT_PSEUDO_CONF",
    "TuningSet",
    "box_agreement",
    "check_disjoint",
    "embedding_cosine",
    "output_cosine",
    "pseudo_map",
    "score_cosine",
    "topk_agreement",
]
