"""CLIP image preprocessing in numpy/PIL: bicubic resize of the shorter side, centre crop, CLIP mean/std."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edgekit.models.yolo.processing import read_image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess_image(path: str | Path, size: int = 224, mean: tuple[float, ...] = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD) -> np.ndarray:
    """One image as CLIP's ``pixel_values`` (1, 3, size, size) float32, as OpenAI's and Hugging Face's processors do."""
    image = read_image(path)
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])
