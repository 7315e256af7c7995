"""Load a CLIP model from whatever a user has, as Hugging Face's ``CLIPModel`` (FP32, eval, eager attention).

Sources, in the order ``load_clip`` tries them:

* ``weights`` is ``None``: the architecture of ``config`` with random weights seeded by ``seed`` (tests, CI);
* a Hugging Face ``CLIPModel`` folder (``config.json`` + ``model.safetensors`` / sharded index / ``pytorch_model.bin``),
  or an open_clip Hub folder (``open_clip_config.json`` + ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``);
* an open_clip / OpenAI CLIP weights file (``.safetensors``, ``.bin``, ``.pt``, ``.pth``) with ``config`` its model config;
* a Hub id (``org/name``) that is not a local path: ``CLIPModel.from_pretrained`` (needs network or a warm cache).

Pickled files are read with ``torch.load(weights_only=True)``. OpenAI's original release is a TorchScript archive,
which ``torch.load`` refuses with ``weights_only``; it is read by a restricted unpickler that only rebuilds tensors
and inert attribute records. No function named by a file is ever called.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from edgekit.errors import EdgekitError
from edgekit.models.clip.open_clip import check_clip_state_dict, config_from_open_clip, state_dict_from_open_clip
from edgekit.models.pickled import STORAGE_DTYPES, Record, record_class

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_HF_TOWERS = ("vision_model.", "text_model.")
_ARCH_FIELDS = {
    "text_config": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings", "hidden_act"),
    "vision_config": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size", "hidden_act"),
}


# --- configs ------------------------------------------------------------------------------------------------------


def read_config(path: str | Path) -> tuple[Any, str]:
    """``(CLIPConfig, format)`` from an open_clip model config JSON (``format="open_clip"``) or a Hugging Face CLIP
    ``config.json`` (``format="hf"``); ``path`` may be the file or a folder holding ``config.json`` / ``open_clip_config.json``."""
    from transformers import CLIPConfig

    path = Path(path)
    if path.is_dir():
        found = next((path / n for n in ("config.json", "open_clip_config.json") if (path / n).is_file()), None)
        if found is None:
            raise EdgekitError("folder has no config.json or open_clip_config.json", path, "point model.config at the model config JSON")
        path = found
    if not path.is_file():
        raise EdgekitError("model config not found", path, "check model.config in the recipe (paths may use ${EDGEKIT_ASSETS})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise EdgekitError(f"model config is not valid JSON ({exc})", path, "pass an open_clip model config or a Hugging Face CLIP config.json") from exc
    if not isinstance(raw, dict):
        raise EdgekitError("model config is not a JSON object", path, "pass an open_clip model config or a Hugging Face CLIP config.json")
    from edgekit.models.vlm.architectures import check_model_size

    if "vision_cfg" in raw or "model_cfg" in raw:
        try:
            config, kind = config_from_open_clip(raw, str(path)), "open_clip"
        except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError, OverflowError) as exc:
            raise EdgekitError(f"invalid open_clip model config ({type(exc).__name__}: {exc})"[:300], path, "pass an open_clip model config (embed_dim, vision_cfg, text_cfg)") from exc
    else:
        model_type = raw.get("model_type")
        if model_type != "clip" or not isinstance(raw.get("vision_config"), dict) or not isinstance(raw.get("text_config"), dict):
            raise EdgekitError(f"not a CLIP config (model_type={model_type!r})", path, "pass an open_clip model config (embed_dim, vision_cfg, text_cfg) or a Hugging Face CLIPModel config.json")
        try:
            config, kind = CLIPConfig.from_dict(raw), "hf"
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise EdgekitError(f"invalid Hugging Face CLIP config ({exc})"[:300], path, "re-download config.json") from exc
    check_model_size(config, path)  # before any weight is allocated: hidden_size 10^9 is refused here
    return config, kind


def _architecture(config) -> dict[str, Any]:
    arch = {"projection_dim": config.projection_dim}
    for tower, fields in _ARCH_FIELDS.items():
        sub = getattr(config, tower)
        arch.update({f"{tower}.{f}": getattr(sub, f) for f in fields})
    return arch


def _check_same_architecture(given, found, given_path: str | Path, found_path: Path) -> None:
    a, b = _architecture(given), _architecture(found)
    diff = [f"{k} {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k]]
    if diff:
        raise EdgekitError(f"model.config disagrees with {found_path.name} of the weights folder: {'; '.join(diff[:4])}", given_path, f"drop model.config ({found_path} describes these weights) or make them agree")


# --- tensors ------------------------------------------------------------------------------------------------------


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise EdgekitError(f"corrupt or truncated safetensors file ({exc})"[:300], path, "re-download or re-convert the weights") from exc


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _read_pickle(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors, containers and primitives only; anything else is refused unrun."""
    if _is_torchscript(path):
        return _read_torchscript(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # open_clip training checkpoints keep their args
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = re.search(r"GLOBAL ([\w.]+)|Unsupported operand \d+", str(exc))
        what = f" ({detail.group(1) or detail.group(0)})" if detail else ""
        raise EdgekitError(
            f"refusing to unpickle: the file holds more than tensors and containers{what}; loading it could run code",
            path,
            "in a trusted environment, save the model's state_dict with safetensors.torch.save_file and pass that .safetensors",
        ) from exc
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, struct.error, OSError, zipfile.BadZipFile) as exc:  # truncated or random bytes
        raise EdgekitError(f"cannot read PyTorch checkpoint ({type(exc).__name__}: {exc})"[:300], path, "re-download the weights (the file may be truncated)") from exc


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset)).clone()


def _identity(value: Any, *_: Any) -> Any:
    return value


_TS_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
}


class _TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TS_ALLOWED:
            return _TS_ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        if module == "__torch__" or module.startswith("__torch__."):
            return record_class(f"{module}.{name}")
        raise pickle.UnpicklingError(f"refusing {module}.{name}")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        data = bytearray(self.archive.read(f"{self.prefix}data/{pid[2]}"))
        return torch.frombuffer(data, dtype=pid[1]) if data else torch.empty(0, dtype=pid[1])


def _record_tensors(node: Any, prefix: str, out: dict[str, torch.Tensor], depth: int = 0) -> None:
    state = node.state if isinstance(node, Record) else None
    if not isinstance(state, dict) or depth > 64:
        return
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            out[f"{prefix}{name}"] = value
        elif isinstance(value, Record):
            _record_tensors(value, f"{prefix}{name}.", out, depth + 1)


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    """Parameters and buffers of a TorchScript archive (OpenAI's CLIP release), without loading its code."""
    with zipfile.ZipFile(path) as archive:
        pkl = next((n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise EdgekitError("TorchScript archive has no data.pkl", path, "re-download the weights")
        try:
            root = _TorchScriptUnpickler(archive.read(pkl), archive, pkl[: -len("data.pkl")]).load()
        except Exception as exc:  # noqa: BLE001 - any failure of a hostile or broken file is a user error
            raise EdgekitError(f"refusing to read TorchScript archive ({type(exc).__name__}: {exc})"[:300], path, "pass open_clip or Hugging Face weights (.safetensors)") from exc
    tensors: dict[str, torch.Tensor] = {}
    _record_tensors(root, "", tensors)
    if not tensors:
        raise EdgekitError("TorchScript archive holds no tensors", path, "pass open_clip or Hugging Face weights")
    return tensors


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise EdgekitError("weights file not found", path, "check model.weights in the recipe (paths may use ${EDGEKIT_ASSETS})")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise EdgekitError(f"unsupported weights format '{path.suffix}'", path, f"pass a Hugging Face CLIP folder or an open_clip weights file ({', '.join(WEIGHT_SUFFIXES)})")
    obj = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pickle(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EdgekitError("file holds no state dict of tensors", path, "pass the model weights (a state dict), not a whole pickled model")
    return obj


def _is_hf_state_dict(sd: dict[str, Any]) -> bool:
    return any(str(k).startswith(_HF_TOWERS) for k in sd)


def _hf_state_dict(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.endswith("position_ids")}  # persistent buffers in older checkpoints


# --- models -------------------------------------------------------------------------------------------------------


def _build(config):
    from transformers import CLIPModel

    return CLIPModel._from_config(config, attn_implementation="eager", dtype=torch.float32)


def _load(config, sd: dict[str, torch.Tensor], source: str | Path):
    check_clip_state_dict(sd, config, source)
    model = _build(config)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise EdgekitError(f"weights do not fit the model ({exc})"[:300], source, "pass the config these weights were trained with") from exc
    return model


def _hf_folder_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise EdgekitError("invalid sharded-checkpoint index", index, "re-download the model folder") from exc
            return [folder / name for name in dict.fromkeys(weight_map.values())]
    return [folder / name for name in ("model.safetensors", "pytorch_model.bin") if (folder / name).is_file()][:1]


def _from_folder(folder: Path, config: str | Path | None) -> tuple[Any, dict]:
    if (folder / "config.json").is_file():
        cfg, _ = read_config(folder / "config.json")
        files = _hf_folder_files(folder)
        if not files:
            raise EdgekitError("Hugging Face folder has config.json but no model.safetensors or pytorch_model.bin", folder, "download the weights into the folder")
        if config is not None:
            _check_same_architecture(read_config(config)[0], cfg, config, folder / "config.json")
        sd: dict[str, torch.Tensor] = {}
        for file in files:
            sd.update(_read_weights(file))
        if not _is_hf_state_dict(sd):
            raise EdgekitError("weights in the folder are not Hugging Face CLIPModel weights", files[0], "pass the open_clip weights file with model.config instead")
        model = _load(cfg, _hf_state_dict(sd), folder)
        return model, {"source": "hf_folder", "files": [str(f) for f in files], "config": str(folder / "config.json"), "config_format": "hf"}
    if (folder / "open_clip_config.json").is_file():
        files = [folder / n for n in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin") if (folder / n).is_file()][:1]
        if not files:
            raise EdgekitError("open_clip folder has no open_clip_model.safetensors or open_clip_pytorch_model.bin", folder, "download the weights into the folder")
        return _from_file(files[0], config if config is not None else folder / "open_clip_config.json")
    raise EdgekitError("folder holds no CLIP model (no config.json or open_clip_config.json)", folder, "pass a Hugging Face CLIPModel folder, or an open_clip weights file with model.config")


def _from_file(path: Path, config: str | Path | None) -> tuple[Any, dict]:
    sd = _read_weights(path)
    if config is None:
        raise EdgekitError("open_clip weights need their model config", path, "set model.config to the open_clip model config JSON (e.g. TinyCLIP-ViT-8M-16-Text-3M.json), or pass a Hugging Face CLIP folder as model.weights")
    cfg, cfg_format = read_config(config)
    torchscript = path.suffix != ".safetensors" and _is_torchscript(path)
    if torchscript and cfg_format == "open_clip":  # every OpenAI CLIP uses QuickGELU; open_clip forces it for them too
        cfg.text_config.hidden_act = cfg.vision_config.hidden_act = "quick_gelu"
    if _is_hf_state_dict(sd):
        kind, sd = "hf_state_dict", _hf_state_dict(sd)
    else:
        kind, sd = ("openai_torchscript" if torchscript else "open_clip"), state_dict_from_open_clip(sd, cfg, path)
    return _load(cfg, sd, path), {"source": kind, "files": [str(path)], "config": str(config), "config_format": cfg_format}


def _from_hub(repo_id: str) -> Any:
    from transformers import CLIPModel

    try:
        return CLIPModel.from_pretrained(repo_id, attn_implementation="eager", dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo, wrong model type
        raise EdgekitError(
            f"not a local path, and loading it from the Hugging Face Hub failed (hub unreachable or not a CLIP model: {type(exc).__name__})",
            repo_id,
            "download the model folder (config.json + model.safetensors) and pass its local path as model.weights",
        ) from exc


def load_clip(weights: str | Path | None, config: str | Path | None = None, seed: int = 0) -> tuple[Any, dict]:
    """``(CLIPModel, provenance)``: the model in eval mode, FP32, eager attention (plain ops in the ONNX export).

    ``weights``: a Hugging Face / open_clip model folder, an open_clip weights file (with ``config``), a Hub id, or
    ``None`` for random weights drawn from ``seed`` (same seed, identical tensors). ``config``: an open_clip model
    config JSON or a Hugging Face ``config.json`` (file or folder). Errors are ``EdgekitError`` naming file and fix.
    """
    if weights is None or str(weights) == "":
        if config is None:
            raise EdgekitError("neither model.weights nor model.config is set", None, "set model.weights to CLIP weights, or model.config to a model config for random weights")
        cfg, cfg_format = read_config(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build(cfg)
        provenance: dict[str, Any] = {"source": "random", "seed": seed, "files": [], "config": str(config), "config_format": cfg_format}
    else:
        path = Path(weights)
        if path.is_dir():
            model, provenance = _from_folder(path, config)
        elif path.is_file():
            model, provenance = _from_file(path, config)
        elif isinstance(weights, str) and _HUB_ID.match(weights) and not weights.endswith(WEIGHT_SUFFIXES + (".json",)):
            model = _from_hub(weights)
            provenance = {"source": "hub", "files": [], "config": weights, "config_format": "hf"}
        else:
            raise EdgekitError("weights not found", path, "check model.weights in the recipe (paths may use ${EDGEKIT_ASSETS})")
        provenance["weights"] = str(weights)
    model.eval()
    cfg = model.config
    provenance.update(
        {
            "dtype": "float32",
            "attn_implementation": "eager",
            "hidden_act": {"vision": cfg.vision_config.hidden_act, "text": cfg.text_config.hidden_act},
            "parameters": {
                "vision": sum(p.numel() for p in model.vision_model.parameters()),
                "text": sum(p.numel() for p in model.text_model.parameters()),
                "total": sum(p.numel() for p in model.parameters()),
            },
        }
    )
    return model, provenance
