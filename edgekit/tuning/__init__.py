"""Tuning: label-free metrics that choose quantization settings on images disjoint from the evaluation set.

``proxy`` (metrics, disjointness), ``scorer`` (what the job asks a family for), ``groups`` / ``sensitivity`` /
``search`` (mixed precision priced in measured latency) are imported from their modules; the proxies are also here."""

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
