"""Load a VLM and its processor from a Hugging Face folder: real weights, or random weights from the folder's config.

The same code serves a real SmolVLM-256M or LLaVA folder and the scaled-down configs in ``recipes/models/``: the
config sizes are the only difference. A folder with tokenizer files is a complete checkpoint and is read with
``AutoProcessor``; a config-only folder gets its processor built from its image-processor, processor and
chat-template files and ``model.tokenizer``. Weights are read from safetensors (``pytorch_model.bin`` only through
transformers' ``weights_only`` loader), never by executing pickled code. A folder without tokenizer files takes
``model.tokenizer`` (e.g. OpenAI's CLIP BPE from the assets); the architecture's special tokens are added and checked
against the config's image token id and vocabulary size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from edgekit.artifacts import sha256_file
from edgekit.errors import EdgekitError
from edgekit.models.vlm.architectures import (
    Architecture,
    architecture_of,
    check_model_size,
    image_token_id,
    language_parts,
)

WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def _folder(weights: str | Path | None, config: str | Path | None) -> Path:
    source = weights if weights not in (None, "") else config
    if source is None:
        raise EdgekitError("neither model.weights nor model.config is set", None, "set model.weights to a Hugging Face VLM folder, or model.config to a config folder for random weights")
    path = Path(source).expanduser()
    if path.is_file() and path.name == "config.json":
        path = path.parent
    if not (path / "config.json").is_file():
        raise EdgekitError("not a Hugging Face model folder (no config.json)", path, "pass the folder holding config.json, preprocessor_config.json and the weights")
    return path


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors files, else its ``pytorch_model*.bin`` files (``WEIGHT_GLOBS`` in preference order)."""
    for pattern in WEIGHT_GLOBS:
        if files := sorted(folder.glob(pattern)):
            return files
    return []


def load_tokenizer(folder: Path, source: str | Path | None, arch: Architecture):
    """For a folder without tokenizer files: ``source`` (CLIP BPE ``.gz``, a tokenizer folder or a hub id), with the
    architecture's special tokens added (they keep their ids when the tokenizer already has them)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if source is None:
        raise EdgekitError("the model folder has no tokenizer files", folder, "add tokenizer.json to the folder, or set model.tokenizer (e.g. ${EDGEKIT_ASSETS}/clip_tokenizer/bpe_simple_vocab_16e6.txt.gz)")
    elif str(source).endswith(".gz") or (Path(source).is_dir() and any(Path(source).glob("bpe_simple_vocab*.txt.gz"))):
        from tokenizers import decoders, processors

        from edgekit.models.clip.tokenizer import load_tokenizer as load_clip_tokenizer

        backend = load_clip_tokenizer(source).hf.backend_tokenizer
        backend = type(backend).from_str(backend.to_str())  # a copy: BOS only, no EOS appended to prompts
        bos = backend.token_to_id("<|startoftext|>")
        backend.decoder = decoders.BPEDecoder(suffix="</w>")  # CLIP marks word ends with </w>
        backend.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A", pair="<|startoftext|> $A $B", special_tokens=[("<|startoftext|>", bos)])
        tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>")
        origin = str(source)
    else:
        tok, origin = AutoTokenizer.from_pretrained(str(source)), str(source)
    missing = [t for t in arch.special_tokens if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return tok, origin


def _chat_template(folder: Path) -> str | None:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    return None


def load_processor(folder: Path, tokenizer, arch: Architecture, config):
    """The architecture's processor from the folder's image-processor, processor and chat-template files."""
    from transformers import AutoImageProcessor

    if not (folder / "preprocessor_config.json").is_file():
        raise EdgekitError("the model folder has no preprocessor_config.json", folder, "add the image processor settings of the model (resize, normalization, image splitting)")
    image_processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    kwargs: dict[str, Any] = {}
    if (folder / "processor_config.json").is_file():
        kwargs = {k: v for k, v in json.loads((folder / "processor_config.json").read_text(encoding="utf-8")).items() if k != "processor_class"}
    if arch.name == "llava":
        vision = config.vision_config
        kwargs.setdefault("patch_size", vision.patch_size)
        kwargs.setdefault("vision_feature_select_strategy", config.vision_feature_select_strategy)
        kwargs.setdefault("num_additional_image_tokens", 1 if vision.model_type == "clip_vision_model" else 0)
    _, processor_class = arch.load_classes()
    return processor_class(image_processor=image_processor, tokenizer=tokenizer, chat_template=_chat_template(folder), **kwargs)


def _check_tokens(tokenizer, config, folder: Path) -> None:
    vocab = config.text_config.vocab_size
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    if image_id != image_token_id(config):
        raise EdgekitError(f"the tokenizer's <image> id is {image_id} but the config's image token id is {image_token_id(config)}", folder / "config.json",
                           f"set the config's image token id to {image_id}, or use the model's own tokenizer")
    if len(tokenizer) > vocab:
        raise EdgekitError(f"the tokenizer has {len(tokenizer)} tokens but text_config.vocab_size is {vocab}", folder / "config.json",
                           f"set text_config.vocab_size to at least {len(tokenizer)}, or use the model's own tokenizer")


def load_vlm(weights: str | Path | None, config: str | Path | None = None, tokenizer: str | Path | None = None, seed: int = 0) -> tuple[Any, Any, Architecture, dict]:
    """``(model, processor, architecture, provenance)``: FP32, eager attention, eval mode.

    ``weights``: a Hugging Face VLM folder with weights; ``config``: a folder (or its ``config.json``) whose
    architecture gets random weights from ``seed`` when ``weights`` is empty (same seed, identical tensors).
    """
    from transformers import AutoConfig

    folder = _folder(weights, config)
    config_path = folder / "config.json"
    try:
        config_dict = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise EdgekitError(f"config.json is not valid JSON ({exc})"[:300], config_path, "re-download the model's config.json") from exc
    if not isinstance(config_dict, dict):
        raise EdgekitError("config.json is not a JSON object", config_path, "re-download the model's config.json")
    arch = architecture_of(config_dict, config_path)
    try:
        hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
        raise EdgekitError(f"invalid Hugging Face config ({type(exc).__name__}: {exc})"[:300], config_path, "re-download the model's config.json") from exc
    check_model_size(hf_config, config_path)  # before any weight is allocated: hidden_size 10^9 is refused here
    model_class, _ = arch.load_classes()
    files = weight_files(folder) if weights not in (None, "") else []
    if weights not in (None, "") and not files:
        raise EdgekitError("the model folder has config.json but no *.safetensors or pytorch_model.bin", folder, "download the weights into the folder, or set model.config instead of model.weights for random weights")
    if files:
        model = model_class.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32, attn_implementation="eager",
                                            use_safetensors=files[0].suffix == ".safetensors")
        provenance: dict[str, Any] = {"source": "hf_folder", "files": {str(f): sha256_file(f) for f in files}}
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_class._from_config(hf_config, attn_implementation="eager", dtype=torch.float32)
        provenance = {"source": "random", "seed": seed, "files": {}}
    model.eval()
    if any((folder / n).is_file() for n in TOKENIZER_FILES):  # a complete model folder (a real download): its own processor
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        tok, tok_origin = processor.tokenizer, str(folder)
    else:
        tok, tok_origin = load_tokenizer(folder, tokenizer, arch)
        processor = load_processor(folder, tok, arch, model.config)
    _check_tokens(tok, model.config, folder)
    lm, embed, head = language_parts(model)
    provenance.update({
        "architecture": arch.name,
        "folder": str(folder),
        "config_sha256": sha256_file(folder / "config.json"),
        "tokenizer": tok_origin,
        "dtype": "float32",
        "attn_implementation": "eager",
        "parameters": {
            "total": sum(p.numel() for p in model.parameters()),
            "decoder": sum(p.numel() for p in lm.parameters()) - embed.weight.numel(),
            "embedding": embed.weight.numel(),
            "lm_head": head.weight.numel(),
        },
        "tied_embeddings": head.weight.data_ptr() == embed.weight.data_ptr(),
    })
    return model, processor, arch, provenance
