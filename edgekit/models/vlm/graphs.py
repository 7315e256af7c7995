"""The three graphs of a VLM as PyTorch modules ready for the TorchScript exporter.

1. vision (``Architecture.vision_graph``): pixel_values -> image_features (vision tower + projector), (images, tokens, hidden);
2. ``EmbedGraph``: input_ids -> inputs_embeds;
3. ``DecoderGraph``: inputs_embeds, attention_mask, position_ids, past key/values -> logits, present key/values
   (prefill when the past is empty, decode otherwise: one graph). Grouped-query attention is kept: the cache has
   the model's key/value heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.models.vlm.architectures import Architecture, image_size, language_parts


@dataclass(frozen=True)
class CacheLayout:
    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, text_config) -> CacheLayout:
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        kv = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
        return cls(text_config.num_hidden_layers, kv, head_dim)

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]

    def present_names(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in range(self.layers) for kv in ("key", "value")]

    def empty(self) -> dict[str, np.ndarray]:
        """The past of a prefill (batch 1): every ``past_key_values`` input with zero cached positions."""
        return {n: np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32) for n in self.past_names()}


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


class EmbedGraph(nn.Module):
    def __init__(self, embed_tokens: nn.Module) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


def vlm_graphs(model, arch: Architecture) -> dict[str, nn.Module]:
    """The three graphs of a VLM (eager attention, eval): ``vision``, ``embed``, ``decoder``."""
    lm, embed, head = language_parts(model)
    return {
        "vision": arch.vision_graph(model).eval(),
        "embed": EmbedGraph(embed).eval(),
        "decoder": DecoderGraph(lm, head, model.config.text_config).eval(),
    }


GRAPH_IO = {
    "vision": (("pixel_values",), ("image_features",)),
    "embed": (("input_ids",), ("inputs_embeds",)),
}


def example_inputs(model, layout: CacheLayout) -> dict[str, tuple[torch.Tensor, ...]]:
    """Inputs the exporter traces each graph with (a decode step: 2 new tokens after 3 cached ones)."""
    size = image_size(model.config)
    hidden = model.config.text_config.hidden_size
    past = [torch.zeros(1, layout.kv_heads, 3, layout.head_dim) for _ in range(2 * layout.layers)]
    return {
        "vision": (torch.zeros(1, 3, size, size),),
        "embed": (torch.tensor([[1, 2, 3]]),),
        "decoder": (torch.zeros(1, 2, hidden), torch.ones(1, 5, dtype=torch.int64), torch.tensor([[3, 4]]), *past),
    }


def graph_io(name: str, layout: CacheLayout) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, dict[int, str]]]:
    """``(input names, output names, dynamic axes)`` of one graph."""
    if name == "vision":
        return GRAPH_IO["vision"] + ({"pixel_values": {0: "images"}, "image_features": {0: "images"}},)
    if name == "embed":
        return GRAPH_IO["embed"] + ({"input_ids": {0: "batch", 1: "sequence"}, "inputs_embeds": {0: "batch", 1: "sequence"}},)
    names_in = ("inputs_embeds", "attention_mask", "position_ids", *layout.past_names())
    names_out = ("logits", *layout.present_names())
    dynamic = {"inputs_embeds": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
               "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}
    dynamic |= {n: {0: "batch", 2: "past"} for n in layout.past_names()} | {n: {0: "batch", 2: "total"} for n in layout.present_names()}
    return names_in, names_out, dynamic


def export_vlm(model, arch: Architecture, folder, opset: int = 17) -> dict[str, Path]:
    """Export the three graphs into ``folder`` as ``{name}.onnx`` (dynamic image count, batch, sequence and past
    length); returns their paths."""
    from edgekit.export import export_module

    folder = Path(folder)
    graphs = vlm_graphs(model, arch)
    layout = graphs["decoder"].layout
    examples = example_inputs(model, layout)
    paths = {}
    for name, module in graphs.items():
        names_in, names_out, dynamic = graph_io(name, layout)
        paths[name] = export_module(module, examples[name], folder / f"{name}.onnx", opset, names_in, names_out, dynamic)
    return paths
