"""The VLM family: load a model and its processor, turn (image, prompt) into graph inputs, decode tokens.

A run folder keeps what ``edgekit generate`` needs beside the graphs: the processor (``processor/``) and
``vlm.json`` (architecture, image token, stop tokens, cache layout, prompt format).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.models.vlm.architectures import ARCHITECTURES, Architecture, image_size, image_token_id
from edgekit.models.vlm.graphs import CacheLayout

META_FILE, PROCESSOR_DIR = "vlm.json", "processor"


def _eos_ids(model, tokenizer) -> list[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    for token in ("<end_of_utterance>",):
        if token in tokenizer.get_vocab():
            ids.append(tokenizer.convert_tokens_to_ids(token))
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(int(i) for i in ids))


class VlmFamily:
    """A loaded VLM's processor and generation settings; ``load`` from a model folder or ``from_run``."""

    def __init__(self, processor, arch: Architecture, layout: CacheLayout, image_token: int, eos_token_ids: list[int], size: int) -> None:
        self.processor, self.arch, self.layout = processor, arch, layout
        self.image_token_id, self.eos_token_ids, self.image_size = image_token, eos_token_ids, size
        self.provenance: dict[str, Any] = {}
        self.context: int | None = None  # the decoder's context in tokens (``edgekit generate`` refuses longer prompts)

    @classmethod
    def load(cls, weights, config=None, tokenizer=None, seed: int = 0) -> tuple[VlmFamily, Any]:
        """``(family, model)`` from a Hugging Face folder (see ``edgekit.models.vlm.checkpoint.load_vlm``)."""
        from edgekit.models.vlm.checkpoint import load_vlm

        model, processor, arch, provenance = load_vlm(weights, config, tokenizer, seed)
        family = cls(processor, arch, CacheLayout.of(model.config.text_config), image_token_id(model.config), _eos_ids(model, processor.tokenizer), image_size(model.config))
        family.provenance = provenance
        family.context = getattr(model.config.text_config, "max_position_embeddings", None)
        return family, model

    # --- prompts and inputs -----------------------------------------------------------------------------------

    def prompt_text(self, prompt: str, with_image: bool = True) -> str:
        """The prompt in the model's chat format (its chat template, else the architecture's format)."""
        if getattr(self.processor, "chat_template", None):
            content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
            return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        return self.arch.prompt_format.format(image="<image>" if with_image else "", prompt=prompt)

    def inputs(self, image: str | Path | Any | None, prompt: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(input_ids (1, T) int64, pixel_values (images, 3, S, S) float32 or None)`` for one image and prompt."""
        from edgekit.imaging import open_rgb, to_rgb

        pil = None
        if image is not None:
            pil = open_rgb(image) if isinstance(image, (str, Path)) else to_rgb(image)
        text = self.prompt_text(prompt, with_image=pil is not None)
        enc = self.processor(text=text, images=[pil] if pil is not None else None, return_tensors="np")
        ids = np.asarray(enc["input_ids"], np.int64)
        if pil is None:
            return ids, None
        pixels = np.asarray(enc["pixel_values"], np.float32)
        pixels = pixels.reshape(-1, *pixels.shape[-3:])
        mask = enc.get("pixel_attention_mask")
        if mask is not None:
            mask = np.asarray(mask).reshape(-1, *pixels.shape[-2:])
            real = np.abs(pixels).reshape(len(pixels), -1).sum(axis=1) > 0  # processors pad batches with all-zero images
            pixels, mask = pixels[real], mask[real]
            if not mask.all():
                raise EdgekitError("the processor padded image tiles, which the exported vision graph does not take", None,
                                   "enable image splitting (do_image_splitting) or resize images to the tile size in preprocessor_config.json")
        return ids, pixels

    def decode(self, tokens: list[int]) -> str:
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    # --- run folder -------------------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """``processor/`` and ``vlm.json`` into a run folder."""
        from edgekit.artifacts import write_json_atomic

        self.processor.save_pretrained(str(folder / PROCESSOR_DIR))
        write_json_atomic(folder / META_FILE, {
            "architecture": self.arch.name, "image_token_id": self.image_token_id, "eos_token_ids": self.eos_token_ids,
            "image_size": self.image_size, "cache": asdict(self.layout), "prompt_format": self.arch.prompt_format,
            **({"context": int(self.context)} if self.context else {}),
        })

    @classmethod
    def from_run(cls, folder: Path) -> VlmFamily:
        from transformers import AutoProcessor

        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise EdgekitError("not a VLM run folder (no vlm.json)", folder, "pass the --out folder of `edgekit export recipes/smolvlm.yaml`")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        processor = AutoProcessor.from_pretrained(str(folder / PROCESSOR_DIR), local_files_only=True)
        return cls(processor, ARCHITECTURES[meta["architecture"]], CacheLayout(**meta["cache"]), meta["image_token_id"], meta["eos_token_ids"], meta["image_size"])
