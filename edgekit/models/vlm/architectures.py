"""The VLM architectures edgekit exports, each a thin description over transformers' classes.

An architecture names its model and processor classes, the special tokens its processor expects in the tokenizer,
its vision graph (pixel values -> features in the decoder's width), and the prompt format used when the processor
has no chat template. Everything else (embedding, KV-cache decoder, generation) is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]
    model_class: str
    processor_class: str
    special_tokens: tuple[str, ...]
    vision_graph: Callable[[Any], nn.Module]
    prompt_format: str  # "{prompt}" and "{image}" placeholders; used when the processor has no chat template

    def load_classes(self) -> tuple[type, type]:
        import transformers

        return getattr(transformers, self.model_class), getattr(transformers, self.processor_class)


class LlavaVision(nn.Module):
    """LLaVA: vision tower (feature layer, CLS dropped or kept) + MLP projector -> (images, tokens, hidden)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.model.model.get_image_features(
            pixel_values=pixel_values, vision_feature_layer=self.config.vision_feature_layer,
            vision_feature_select_strategy=self.config.vision_feature_select_strategy,
        )
        features = getattr(features, "pooler_output", features)
        if isinstance(features, (list, tuple)):
            features = torch.stack(list(features))
        return features


class Idefics3Vision(nn.Module):
    """Idefics3 / SmolVLM: SigLIP tower on full square tiles + pixel-shuffle connector -> (tiles, tokens, hidden).

    The processor splits an image into ``image_size`` tiles plus a global view, so no tile has padding: every patch
    is real, and the position ids are ``0..patches-1``, which is what transformers' bucketized ids reduce to when
    the patch mask is all ones (checked against ``get_image_features`` in the tests).
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.vision = model.model.vision_model
        self.connector = model.model.connector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        emb = self.vision.embeddings
        x = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        x = x + emb.position_embedding.weight[: x.shape[1]].unsqueeze(0)
        x = self.vision.encoder(inputs_embeds=x, attention_mask=None).last_hidden_state
        return self.connector(self.vision.post_layernorm(x))


LLAVA = Architecture(
    name="llava",
    model_types=("llava",),
    model_class="LlavaForConditionalGeneration",
    processor_class="LlavaProcessor",
    special_tokens=("<image>",),
    vision_graph=LlavaVision,
    prompt_format="USER: {image}\n{prompt} ASSISTANT:",
)

IDEFICS3 = Architecture(
    name="idefics3",
    model_types=("idefics3",),
    model_class="Idefics3ForConditionalGeneration",
    processor_class="Idefics3Processor",
    special_tokens=("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                    *(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))),
    vision_graph=Idefics3Vision,
    prompt_format="User:{image}{prompt}<end_of_utterance>\nAssistant:",
)

ARCHITECTURES = {a.name: a for a in (LLAVA, IDEFICS3)}


def architecture_of(config_dict: dict[str, Any], where: Any = None) -> Architecture:
    """The architecture of a Hugging Face ``config.json`` (by ``model_type``), or a clear error."""
    model_type = config_dict.get("model_type")
    for arch in ARCHITECTURES.values():
        if model_type in arch.model_types:
            return arch
    supported = ", ".join(t for a in ARCHITECTURES.values() for t in a.model_types)
    raise EdgekitError(f"unsupported VLM model_type {model_type!r}", where,
                       f"use a Hugging Face folder of one of: {supported} (LLaVA-style or SmolVLM/Idefics3)")


def image_token_id(config) -> int:
    return int(getattr(config, "image_token_id", None) if getattr(config, "image_token_id", None) is not None else config.image_token_index)


def image_size(config) -> int:
    return int(config.vision_config.image_size)


def language_parts(model) -> tuple[nn.Module, nn.Module, nn.Module]:
    """``(decoder stack, token embedding, lm_head)`` of either architecture."""
    inner = model.model
    lm = inner.language_model if hasattr(inner, "language_model") else inner.text_model
    return lm, lm.embed_tokens, model.lm_head
