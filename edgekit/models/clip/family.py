"""The CLIP family: two towers, each exported, quantized, built and timed as its own graph.

``vision``: pixel_values (B, 3, S, S) -> image_embeds (B, E); ``text``: input_ids, attention_mask (B, L) ->
text_embeds (B, E). Both embeddings are unit length, so cosine similarity is a dot product on device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.models.clip.processing import OPENAI_MEAN, OPENAI_STD, preprocess_image


@dataclass(frozen=True)
class Tower:
    """What the exporter and the runners need to know about one tower."""

    name: str
    input_names: tuple[str, ...]
    output_name: str
    dynamic_axes: dict[str, dict[int, str]]


VISION = Tower("vision", ("pixel_values",), "image_embeds", {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}})
TEXT = Tower(
    "text",
    ("input_ids", "attention_mask"),
    "text_embeds",
    {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "text_embeds": {0: "batch"}},
)
TOWERS = (VISION, TEXT)


@dataclass
class ClipFamily:
    """Loading, tokenization and preprocessing of a CLIP model, independent of the backend it runs on."""

    context_length: int = 77
    image_size: int = 224
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    tokenizer: Any = None
    provenance: dict[str, Any] = field(default_factory=dict)

    name = "clip"
    towers = TOWERS

    def load(self, weights: str | None, config: str | None, tokenizer: str | None, seed: int = 0):
        """The FP32 ``CLIPModel`` (eval, eager attention) and its tokenizer; returns the model."""
        from edgekit.errors import EdgekitError
        from edgekit.models.clip.checkpoint import load_clip
        from edgekit.models.clip.tokenizer import load_tokenizer

        model, self.provenance = load_clip(weights, config, seed)
        self.image_size = int(model.config.vision_config.image_size)
        source = tokenizer or (weights if weights and Path(weights).is_dir() else None)
        if source is None:
            raise EdgekitError("no tokenizer for the text tower", config or weights, "set model.tokenizer to OpenAI's bpe_simple_vocab_16e6.txt.gz or a tokenizer folder")
        self.tokenizer = load_tokenizer(source, self.context_length)
        self.provenance["tokenizer"] = str(source)
        return model

    def modules(self, model) -> dict[str, torch.nn.Module]:
        from edgekit.models.clip.towers import TextTower, VisionTower

        return {"vision": VisionTower(model).eval(), "text": TextTower(model).eval()}

    def image_feed(self, path: str | Path) -> dict[str, np.ndarray]:
        return {"pixel_values": preprocess_image(path, self.image_size, self.mean, self.std)}

    def text_feed(self, texts: Sequence[str], trim: bool = True) -> dict[str, np.ndarray]:
        """Token ids and mask; ``trim`` drops the all-padding tail columns (the end token is pooled, and attention is
        causal, so the embedding does not change)."""
        feed = self.tokenizer(list(texts))
        if trim:
            length = max(int(feed["attention_mask"].sum(axis=1).max()), 1)
            feed = {k: np.ascontiguousarray(v[:, :length]) for k, v in feed.items()}
        return feed

    def example_inputs(self, tower: str) -> tuple[torch.Tensor, ...]:
        if tower == "vision":
            return (torch.zeros(1, 3, self.image_size, self.image_size),)
        feed = self.text_feed(["a photo of a cat.", "a diagram"], trim=False)
        return torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])
