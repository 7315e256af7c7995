"""Read YOLO checkpoints without executing pickle code.

* ``.safetensors``: tensors plus ``yaml`` (architecture table) and ``names`` metadata.
* Ultralytics ``.pt`` (a zip holding a pickled ``Model``): read with a restricted unpickler that rebuilds
  only tensors and plain containers. Every other class becomes an inert record of its pickled state, and
  no function named by the file is ever called.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgekit.errors import EdgekitError
from edgekit.models.pickled import STORAGE_DTYPES, Record, record_class


@dataclass
class Checkpoint:
    """Weights (``state_dict`` keys as in the original module tree) and the architecture that goes with them."""

    state_dict: dict[str, torch.Tensor]
    architecture: dict[str, Any]
    names: list[str] = field(default_factory=list)
    source: Path | None = None


class _Storage:
    def __init__(self, dtype: torch.dtype, data: bytes) -> None:
        self.dtype, self.data = dtype, data


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    flat = torch.frombuffer(bytearray(storage.data), dtype=storage.dtype) if storage.data else torch.empty(0, dtype=storage.dtype)
    return torch.as_strided(flat, tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    if isinstance(cls, type) and issubclass(cls, Record):
        return cls()
    raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): dict,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "tuple"): tuple,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, handle: io.BytesIO, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(handle)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        return record_class(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key = pid[1], pid[2]
        dtype = storage_type if isinstance(storage_type, torch.dtype) else torch.uint8
        return _Storage(dtype, self.archive.read(f"{self.prefix}data/{key}"))


def _module_tensors(node: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Walk a pickled nn.Module tree (as records) and collect parameters and buffers."""
    state = node.state if isinstance(node, Record) else None
    if not isinstance(state, dict):
        return
    for kind in ("_parameters", "_buffers"):
        for name, tensor in (state.get(kind) or {}).items():
            if isinstance(tensor, torch.Tensor):
                out[f"{prefix}{name}"] = tensor
    for name, child in (state.get("_modules") or {}).items():
        _module_tensors(child, f"{prefix}{name}.", out)


def _read_pt(path: Path) -> Checkpoint:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise EdgekitError("not a PyTorch zip checkpoint (corrupt or truncated)", path, "re-download the weights") from exc
    with archive:
        pkl = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
        if pkl is None:
            raise EdgekitError("checkpoint has no data.pkl", path, "re-download the weights")
        prefix = pkl[: -len("data.pkl")]
        try:
            obj = _RestrictedUnpickler(io.BytesIO(archive.read(pkl)), archive, prefix).load()
        except Exception as exc:
            raise EdgekitError(f"cannot read checkpoint ({type(exc).__name__}: {exc})"[:300], path, "re-download the weights") from exc
    model = obj.get("ema") or obj.get("model") if isinstance(obj, dict) else obj
    if not isinstance(model, Record) or not isinstance(model.state, dict):
        raise EdgekitError("checkpoint holds no model", path, "pass an Ultralytics YOLO .pt or a .safetensors file")
    state_dict: dict[str, torch.Tensor] = {}
    _module_tensors(model, "", state_dict)
    arch = model.state.get("yaml")
    if not isinstance(arch, dict) or not state_dict:
        raise EdgekitError("checkpoint has no architecture table (yaml) or no weights", path, "pass an Ultralytics YOLO checkpoint")
    names = model.state.get("names") or []
    names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    return Checkpoint(state_dict, arch, names, path)


def _read_safetensors(path: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise EdgekitError("corrupt or truncated safetensors file", path, "re-download or re-convert the weights") from exc
    if "yaml" not in metadata:
        raise EdgekitError("safetensors metadata has no 'yaml' architecture table", path, "save the weights with edgekit or add the metadata")
    try:
        arch = json.loads(metadata["yaml"])
        names = json.loads(metadata.get("names", "[]"))
    except json.JSONDecodeError as exc:
        raise EdgekitError("safetensors metadata is not valid JSON", path, "re-convert the weights") from exc
    return Checkpoint(state_dict, arch, list(names), path)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load YOLO weights and architecture from ``.safetensors`` or an Ultralytics ``.pt`` (never executing pickle code)."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError("weights file not found", path, "check `model.weights` in the recipe (paths may use ${EDGEKIT_ASSETS})")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in (".pt", ".pth"):
        return _read_pt(path)
    raise EdgekitError(f"unsupported weights format '{path.suffix}'", path, "use a .safetensors or Ultralytics .pt file")
