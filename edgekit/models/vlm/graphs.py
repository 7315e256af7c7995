"""The three graphs of a LLaVA-style VLM as PyTorch modules ready for the TorchScript exporter.

1. ``VisionGraph``: pixel_values -> image_features (vision tower + projector), (B, tokens, hidden);
2. ``EmbedGraph``: input_ids -> inputs_embeds;
3. ``DecoderGraph``: inputs_embeds, attention_mask, position_ids, past key/values -> logits, present key/values
   (prefill when the past is empty, decode otherwise: one graph). Grouped-query attention is kept: the cache has
   the model's key/value heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CacheLayout:
    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, text_config) -> "CacheLayout":
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        kv = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
        return cls(text_config.num_hidden_layers, kv, head_dim)

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]

    def present_names(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]


class DecoderGraph(nn.Module):
    """The language model with its head; the cache goes in and out as plain tensors (bound by name at run time)."""

    def __init__(self, language_model: nn.Module, lm_head: nn.Module, text_config) -> None:
        super().__init__()
        self.language_model, self.lm_head, self.text_config = language_model, lm_head, text_config
        self.layout = CacheLayout.of(text_config)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layout.layers)], config=self.text_config)
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache, use_cache=True)
        presents = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (self.lm_head(out.last_hidden_state), *presents)


class VisionGraph(nn.Module):
    """Vision tower + projector of a LLaVA-style model: pixel_values -> image features in the decoder's width."""

    def __init__(self, model, config) -> None:
        super().__init__()
        self.model, self.config = model, config

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.model.model.get_image_features(
            pixel_values=pixel_values, vision_feature_layer=self.config.vision_feature_layer,
            vision_feature_select_strategy=self.config.vision_feature_select_strategy,
        )
        features = getattr(features, "pooler_output", features)
        if isinstance(features, (list, tuple)):
            features = torch.stack(list(features))
        return features


class EmbedGraph(nn.Module):
    def __init__(self, embed_tokens: nn.Module) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


def llava_graphs(model) -> dict[str, nn.Module]:
    """The three graphs of a ``LlavaForConditionalGeneration`` (eager attention, eval)."""
    cfg = model.config
    return {
        "vision": VisionGraph(model, cfg).eval(),
        "embed": EmbedGraph(model.model.language_model.embed_tokens).eval(),
        "decoder": DecoderGraph(model.model.language_model, model.lm_head, cfg.text_config).eval(),
    }


def export_llava(model, folder, opset: int = 17) -> dict[str, object]:
    """Export the three graphs into ``folder`` (dynamic batch, sequence and past length); returns their paths."""
    from pathlib import Path

    from edgekit.export import export_module

    folder = Path(folder)
    graphs = llava_graphs(model)
    cfg = model.config
    layout = graphs["decoder"].layout
    size = cfg.vision_config.image_size
    paths = {
        "vision": export_module(graphs["vision"], (torch.zeros(1, 3, size, size),), folder / "vision.onnx", opset, ("pixel_values",), ("image_features",),
                                {"pixel_values": {0: "batch"}, "image_features": {0: "batch"}}),
        "embed": export_module(graphs["embed"], (torch.tensor([[1, 2, 3]]),), folder / "embed.onnx", opset, ("input_ids",), ("inputs_embeds",),
                               {"input_ids": {0: "batch", 1: "sequence"}, "inputs_embeds": {0: "batch", 1: "sequence"}}),
    }
    hidden = cfg.text_config.hidden_size
    past = [torch.zeros(1, layout.kv_heads, 3, layout.head_dim) for _ in range(2 * layout.layers)]
    args = (torch.zeros(1, 2, hidden), torch.ones(1, 5, dtype=torch.int64), torch.tensor([[3, 4]]), *past)
    names_in = ("inputs_embeds", "attention_mask", "position_ids", *layout.past_names())
    names_out = ("logits", *layout.present_names())
    dynamic = {"inputs_embeds": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"}, "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    dynamic |= {n: {0: "batch", 2: "past"} for n in layout.past_names()} | {n: {0: "batch", 2: "total"} for n in layout.present_names()}
    paths["decoder"] = export_module(graphs["decoder"], args, folder / "decoder.onnx", opset, names_in, names_out, dynamic)
    return paths
