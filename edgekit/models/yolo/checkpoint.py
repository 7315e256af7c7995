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


# Bounds of an architecture table, checked before any module is built: the largest official models (YOLOv5x6,
# YOLOv8x, YOLO11x) stay far inside them, and a hostile table (``width_multiple: 4096`` asks for terabytes) is refused
# with one line naming the checkpoint and the key.
ARCH_BOUNDS = {
    "nc": (1, 10_000),  # classes (LVIS has 1,203)
    "depth_multiple": (1e-3, 8.0),  # official: 0.33 .. 1.33
    "width_multiple": (1e-3, 8.0),  # official: 0.25 .. 1.25
    "max_channels": (1, 16_384),  # official: 512 .. 1,024 (absent in v5 tables: no cap)
}
MAX_LAYERS, MAX_REPEATS, MAX_CHANNELS, MAX_ANCHOR_LEVELS = 512, 64, 16_384, 8


def _bounded(value: Any, key: str, lo: float, hi: float, source: Any, integer: bool = False) -> float:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)) or not math.isfinite(value):
        raise EdgekitError(f"architecture key '{key}' is {value!r}, not a {'whole ' if integer else ''}number", source, "use the checkpoint's own yaml table")
    if not lo <= value <= hi:
        raise EdgekitError(f"architecture key '{key}' is {value!r}, outside {lo:g}..{hi:g}", source, "use the checkpoint's own yaml table (an official YOLO's sizes are far inside these bounds)")
    return value


def check_architecture(arch: Any, source: Any = None) -> None:
    """Refuse an architecture table whose sizes are absurd or malformed (``EdgekitError`` naming ``source`` and the key),
    before anything is allocated. ``build_model`` also counts the parameters on the meta device before building."""
    if not isinstance(arch, dict):
        raise EdgekitError("the architecture table (yaml) is not a mapping", source, "use an Ultralytics YOLO checkpoint")
    for key, (lo, hi) in ARCH_BOUNDS.items():
        if key in arch or key == "nc":
            _bounded(arch.get(key), key, lo, hi, source, integer=key in ("nc", "max_channels"))
    scales = arch.get("scales")
    if scales is not None:
        if not isinstance(scales, dict) or not scales:
            raise EdgekitError("architecture key 'scales' is not a mapping of scale -> [depth, width, max_channels]", source, "use the checkpoint's own yaml table")
        for name, row in scales.items():
            if not isinstance(row, (list, tuple)) or len(row) < 3:
                raise EdgekitError(f"architecture key 'scales.{name}' is {row!r}, not [depth, width, max_channels]", source, "use the checkpoint's own yaml table")
            for (key, (lo, hi)), value in zip(list(ARCH_BOUNDS.items())[1:], row):
                _bounded(value, f"scales.{name}.{key}", lo, hi, source, integer=key == "max_channels")
    layers = []
    for part in ("backbone", "head"):
        rows = arch.get(part)
        if not isinstance(rows, list):
            raise EdgekitError(f"architecture key '{part}' is not a list of layers", source, "use the checkpoint's own yaml table")
        layers += [(f"{part}.{i}", row) for i, row in enumerate(rows)]
    if not layers:
        raise EdgekitError("the architecture table has no layers", source, "use the checkpoint's own yaml table")
    if len(layers) > MAX_LAYERS:
        raise EdgekitError(f"the architecture has {len(layers)} layers (at most {MAX_LAYERS})", source, "use the checkpoint's own yaml table")
    for index, (key, row) in enumerate(layers):
        if not isinstance(row, (list, tuple)) or len(row) != 4 or not isinstance(row[2], str) or not isinstance(row[3], list):
            raise EdgekitError(f"architecture layer '{key}' is {str(row)[:80]}, not [from, repeats, module, args]", source, "use the checkpoint's own yaml table")
        src, repeats, _, args = row
        for j in [src] if not isinstance(src, list) else src:
            if isinstance(j, bool) or not isinstance(j, int) or not (j == -1 or (j < 0 and index + j >= 0) or 0 <= j < index):
                raise EdgekitError(f"architecture layer '{key}' takes input from {src!r}, not an earlier layer", source, "use the checkpoint's own yaml table")
        if index == 0 and src != -1:
            raise EdgekitError(f"architecture layer '{key}' must take the image (from -1), not {src!r}", source, "use the checkpoint's own yaml table")
        _bounded(repeats, f"{key}.repeats", 1, MAX_REPEATS, source, integer=True)
        if args and isinstance(args[0], (int, float)) and not isinstance(args[0], bool) and row[2] not in ("nn.Upsample", "Upsample", "Concat"):
            _bounded(args[0], f"{key}.channels", 1, MAX_CHANNELS, source, integer=True)
        if any(isinstance(a, (int, float)) and not isinstance(a, bool) and abs(a) > MAX_CHANNELS for a in args[1:]):
            raise EdgekitError(f"architecture layer '{key}' has an argument beyond {MAX_CHANNELS:,}: {str(args)[:80]}", source, "use the checkpoint's own yaml table")
    anchors = arch.get("anchors")
    if anchors is not None and not isinstance(anchors, int):
        if (not isinstance(anchors, list) or not 1 <= len(anchors) <= MAX_ANCHOR_LEVELS
                or not all(isinstance(level, list) and level and len(level) % 2 == 0 and len(level) <= 64 for level in anchors)
                or len({len(level) for level in anchors}) != 1
                or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and 0 < a < 1e5 for level in anchors for a in level)):
            raise EdgekitError("architecture key 'anchors' is not a list of levels of positive (w, h) pairs", source, "use the checkpoint's own yaml table")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load YOLO weights and architecture from ``.safetensors`` or an Ultralytics ``.pt`` (never executing pickle code)."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError("weights file not found", path, "check `model.weights` in the recipe (paths may use ${EDGEKIT_ASSETS})")
    if path.suffix == ".safetensors":
        ckpt = _read_safetensors(path)
    elif path.suffix in (".pt", ".pth"):
        ckpt = _read_pt(path)
    else:
        raise EdgekitError(f"unsupported weights format '{path.suffix}'", path, "use a .safetensors or Ultralytics .pt file")
    check_architecture(ckpt.architecture, path)
    return ckpt
