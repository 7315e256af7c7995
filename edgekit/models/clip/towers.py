"""The two CLIP towers as separate modules, each ending in an L2-normalized embedding."""

from __future__ import annotations

import torch
from torch import nn


class VisionTower(nn.Module):
    """pixel_values (B, 3, H, W), CLIP-normalized -> image_embeds (B, E), unit length."""

    def __init__(self, clip) -> None:
        super().__init__()
        self.vision_model, self.visual_projection = clip.vision_model, clip.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return nn.functional.normalize(self.visual_projection(pooled), dim=-1)


class TextTower(nn.Module):
    """input_ids and attention_mask (B, L) int64 -> text_embeds (B, E), unit length (pooled at the end token)."""

    def __init__(self, clip) -> None:
        super().__init__()
        self.text_model, self.text_projection = clip.text_model, clip.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return nn.functional.normalize(self.text_projection(pooled), dim=-1)
