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


MAX_PARAMETERS = 20_000_000_000  # refuse configs beyond 20 B parameters before allocating them
_SIZE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "num_key_value_heads",
              "image_size", "patch_size", "max_position_embeddings")


def _size(sub, key: str, where: Any, default: int = 0) -> int:
    value = getattr(sub, key, None) if not isinstance(sub, dict) else sub.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 10**12:
        raise EdgekitError(f"config key '{key}' is {value!r}, not a size", where, "use the model's own config.json")
    return value


def transformer_parameters(sub, where: Any = None) -> int:
    """Parameters of one transformer tower from its config (embeddings, attention, MLP; norms and biases ignored)."""
    h, inter = _size(sub, "hidden_size", where), _size(sub, "intermediate_size", where)
    layers, vocab = _size(sub, "num_hidden_layers", where), _size(sub, "vocab_size", where)
    heads, kv = _size(sub, "num_attention_heads", where, 1) or 1, _size(sub, "num_key_value_heads", where)
    kv_width = h * kv // heads if kv else h
    patch, image = _size(sub, "patch_size", where), _size(sub, "image_size", where)
    patches = (image // patch) ** 2 if patch else 0
    embeddings = vocab * h * 2 + _size(sub, "max_position_embeddings", where) * h + patches * h + 3 * patch * patch * h
    return embeddings + layers * (2 * h * h + 2 * h * kv_width + 3 * h * inter)


def check_model_size(config, where: Any = None, towers: tuple[str, ...] = ("text_config", "vision_config")) -> int:
    """Refuse (one line naming ``where``) a config whose estimated parameters exceed ``MAX_PARAMETERS`` or whose FP32
    weights would not fit in the memory available, before anything is allocated; returns the estimate."""
    from edgekit.preflight import GIB, available_memory_bytes

    count = sum(transformer_parameters(getattr(config, t, None) if not isinstance(config, dict) else config.get(t) or {}, where) for t in towers)
    sizes = {t: {k: _size(getattr(config, t, None) if not isinstance(config, dict) else config.get(t) or {}, k, where) for k in ("hidden_size", "num_hidden_layers")} for t in towers}
    detail = "; ".join(f"{t}.hidden_size {s['hidden_size']:,}, {t}.num_hidden_layers {s['num_hidden_layers']:,}" for t, s in sizes.items())
    if count > MAX_PARAMETERS:
        raise EdgekitError(f"the config describes about {count / 1e9:,.1f} B parameters (at most {MAX_PARAMETERS / 1e9:.0f} B): {detail}", where,
                           "use the model's own config.json (check hidden_size and num_hidden_layers)")
    available = available_memory_bytes()
    if available is not None and 4 * count > available:
        raise EdgekitError(f"the config's {count / 1e9:,.2f} B parameters need {4 * count / GIB:.1f} GiB as FP32 but {available / GIB:.1f} GiB is available: {detail}",
                           where, "use a smaller model, or free memory")
    return count
