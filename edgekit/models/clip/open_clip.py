"""open_clip checkpoints (TinyCLIP included) read into Hugging Face's ``CLIPModel``: config and weights."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from edgekit.errors import EdgekitError

HEAD_WIDTH = 64  # open_clip's default vision head width: heads = width // 64

# open_clip options whose models Hugging Face's CLIPModel cannot express: (tower, key, accepted values).
_UNSUPPORTED = (
    ("vision_cfg", "pool_type", (None, "tok")),
    ("vision_cfg", "global_average_pool", (None, False)),
    ("vision_cfg", "attentional_pool", (None, False)),
    ("vision_cfg", "attn_pooler_queries", (None,)),
    ("vision_cfg", "no_ln_pre", (None, False)),
    ("vision_cfg", "ls_init_value", (None,)),
    ("vision_cfg", "pos_embed_type", (None, "learnable")),
    ("vision_cfg", "input_patchnorm", (None, False)),
    ("vision_cfg", "norm_kwargs", (None, {})),
    ("text_cfg", "pool_type", (None, "argmax")),
    ("text_cfg", "embed_cls", (None, False)),
    ("text_cfg", "no_causal_mask", (None, False)),
    ("text_cfg", "proj_bias", (None, False)),
    ("text_cfg", "ls_init_value", (None,)),
    ("text_cfg", "norm_kwargs", (None, {})),
)


def _check_supported(cfg: dict[str, Any], source: str | Path | None) -> None:
    if cfg.get("init_logit_bias") is not None:
        raise EdgekitError("SigLIP-style open_clip models (init_logit_bias) are not CLIP models", source, "use a CLIP/TinyCLIP ViT config")
    for tower, key, accepted in _UNSUPPORTED:
        value = (cfg.get(tower) or {}).get(key)
        if value not in accepted:
            raise EdgekitError(f"open_clip option {tower}.{key}={value!r} has no Hugging Face CLIPModel equivalent", source, "use a plain CLIP ViT config (class-token pooling, ln_pre, no layer scale)")


def _square(value: Any, what: str, source: str | Path | None) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise EdgekitError(f"non-square {what} {list(value)} is not supported", source, "use a square image/patch size")
        value = value[0]
    return int(value)


def config_from_open_clip(cfg: dict[str, Any], source: str | None = None):
    """A ``transformers.CLIPConfig`` equal to an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``).

    Only ViT image towers with a transformer text tower are supported; timm/ConvNeXt/FastViT image towers
    (MobileCLIP's S-series) need timm, which needs torchvision, which edgekit does not use.
    """
    from transformers import CLIPConfig

    if "model_cfg" in cfg and "vision_cfg" not in cfg:  # open_clip_config.json of a Hub repo wraps the model config
        cfg = cfg["model_cfg"]
    try:
        vision, text, embed_dim = cfg["vision_cfg"], cfg["text_cfg"], int(cfg["embed_dim"])
    except KeyError as exc:
        raise EdgekitError(f"not an open_clip model config: missing {exc.args[0]!r}", source, "pass an open_clip config JSON (embed_dim, vision_cfg, text_cfg) or a Hugging Face CLIP config.json") from exc
    for key in ("timm_model_name", "hf_model_name"):
        if vision.get(key) or text.get(key):
            raise EdgekitError(f"open_clip towers built on {key} are not supported", source, "use a ViT image tower with a transformer text tower (CLIP, TinyCLIP, MobileCLIP ViT configs)")
    if isinstance(vision.get("layers"), (list, tuple)):
        raise EdgekitError("ResNet (ModifiedResNet) image towers are not supported", source, "use a ViT image tower")
    _check_supported(cfg, source)
    act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
    vision_width = int(vision["width"])
    return CLIPConfig(
        projection_dim=embed_dim,
        text_config={
            "vocab_size": int(text.get("vocab_size", 49408)),
            "hidden_size": int(text["width"]),
            "intermediate_size": int(text["width"] * text.get("mlp_ratio", 4.0)),
            "num_hidden_layers": int(text["layers"]),
            "num_attention_heads": int(text.get("heads", 8)),
            "max_position_embeddings": int(text.get("context_length", 77)),
            "hidden_act": act,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": vision_width,
            "intermediate_size": int(vision_width * vision.get("mlp_ratio", 4.0)),
            "num_hidden_layers": int(vision["layers"]),
            "num_attention_heads": vision_width // int(vision.get("head_width", HEAD_WIDTH)),
            "image_size": _square(vision.get("image_size", 224), "image size", source),
            "patch_size": _square(vision["patch_size"], "patch size", source),
            "hidden_act": act,
        },
    )


# --- weights ------------------------------------------------------------------------------------------------------

# Wrappers around the real open_clip names: DDP (``module.``), TinyCLIP's training checkpoints
# (``_image_encoder.module.``, ``text_encoder_without_ddp.``, ``_logit_scale.module.``).
_WRAPPER = re.compile(r"^(module\.)+|^_?(image_encoder|text_encoder|logit_scale)(_without_ddp)?(\.module)*\.")
# Entries that are not weights: causal-mask buffers and the ints OpenAI's TorchScript release stores beside them.
_IGNORED = {"attn_mask", "input_resolution", "context_length", "vocab_size"}
_TOP = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "text_projection.weight": "text_projection.weight",  # open_clip's nn.Linear text projection: already (E, W)
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}  # used as x @ P
_BLOCK = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_RESBLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def _few(keys: Any, n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _plain_key(key: str) -> str:
    while (stripped := _WRAPPER.sub("", key)) != key:
        key = stripped
    if key.startswith("text."):  # open_clip's CustomTextCLIP keeps the text tower under ``text.``
        key = key[len("text.") :]
    return key


def clip_state_dict_shapes(config) -> dict[str, torch.Size]:
    """Every key of ``CLIPModel(config).state_dict()`` and its shape (built on the meta device: no memory, no init)."""
    from transformers import CLIPModel

    with torch.device("meta"):
        model = CLIPModel(config)
    return {key: tensor.shape for key, tensor in model.state_dict().items()}


def check_clip_state_dict(sd: dict[str, torch.Tensor], config, source: str | Path | None = None) -> None:
    """Raise a one-line ``EdgekitError`` unless ``sd`` has exactly the keys and shapes ``CLIPModel(config)`` expects."""
    expected = clip_state_dict_shapes(config)
    missing, unexpected = set(expected) - set(sd), set(sd) - set(expected)
    if unexpected:
        raise EdgekitError(f"{len(unexpected)} unknown weight(s): {_few(unexpected)}", source, "pass an OpenAI/open_clip CLIP (ViT) checkpoint or a Hugging Face CLIPModel; other architectures are not supported")
    if missing:
        raise EdgekitError(f"{len(missing)} weight(s) missing: {_few(missing)}", source, "the checkpoint is incomplete or has fewer layers than the config: check model.config against the weights")
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(expected[k])}" for k in sorted(expected) if tuple(sd[k].shape) != tuple(expected[k])]
    if wrong:
        raise EdgekitError(f"config does not match the weights ({len(wrong)} shape(s) differ: {'; '.join(wrong[:3])})", source, "pass the model config these weights were trained with")


def state_dict_from_open_clip(sd: dict[str, Any], config, source: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Hugging Face ``CLIPModel`` weights from an OpenAI CLIP / open_clip (TinyCLIP included) state dict.

    Accepts a training checkpoint holding ``state_dict`` and strips DDP/TinyCLIP wrapper prefixes. The fused attention
    ``in_proj`` (rows q, k, v) is split into ``q/k/v_proj``; the projections open_clip applies as ``x @ P`` are
    transposed into ``nn.Linear`` weights. Unknown or missing keys and shapes that disagree with ``config`` raise
    ``EdgekitError``. Tensors keep their dtype.
    """
    if isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for raw_key, value in sd.items():
        key = _plain_key(str(raw_key))
        if not isinstance(value, torch.Tensor):
            unknown.append(str(raw_key))
            continue
        if key.rsplit(".", 1)[-1] in _IGNORED or key.endswith("position_ids"):
            continue
        if key in _TOP:
            out[_TOP[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif key == "logit_scale":
            out["logit_scale"] = value.reshape(())
        elif block := _RESBLOCK.match(key):
            tower = "vision_model" if block.group(1) else "text_model"
            prefix, rest = f"{tower}.encoder.layers.{block.group(2)}.", block.group(3)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[-1]  # weight | bias
                if value.shape[0] % 3:
                    raise EdgekitError(f"{raw_key} has {value.shape[0]} rows, not a multiple of 3 (q, k, v)", source, "pass an unmodified open_clip checkpoint")
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}.{kind}"] = part.clone()
            elif rest in _BLOCK:
                out[prefix + _BLOCK[rest]] = value
            else:
                unknown.append(str(raw_key))
        else:
            unknown.append(str(raw_key))
    if unknown:
        raise EdgekitError(f"{len(unknown)} key(s) are not OpenAI/open_clip CLIP ViT weights: {_few(unknown)}", source, "pass an open_clip CLIP/TinyCLIP ViT checkpoint (ResNet towers, layer scale, attention pooling and SigLIP are not supported)")
    check_clip_state_dict(out, config, source)
    return out
