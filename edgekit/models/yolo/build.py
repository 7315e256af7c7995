"""Build a YOLO ``nn.Module`` from the Ultralytics architecture table stored with the weights."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from edgekit.errors import EdgekitError
from edgekit.models.yolo.checkpoint import Checkpoint, check_architecture
from edgekit.models.yolo.modules import C2PSA, C3, SPPF, Bottleneck, C2f, C3k2, Concat, Conv, Detect, DetectV8

_BLOCKS = {"Conv": Conv, "C3": C3, "C2f": C2f, "C3k2": C3k2, "C2PSA": C2PSA, "SPPF": SPPF, "Bottleneck": Bottleneck}
_REPEATED = {C3, C2f, C3k2, C2PSA}


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


class YoloModel(nn.Module):
    """A YOLO network: ``model`` is the layer list, ``save`` the indices whose outputs later layers reuse."""

    def __init__(self, layers: list[nn.Module], froms: list[int | list[int]], save: set[int], names: list[str]):
        super().__init__()
        self.model = nn.Sequential(*layers)
        self.froms, self.save, self.names = froms, save, names

    @property
    def head(self) -> nn.Module:
        return self.model[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cache: dict[int, torch.Tensor] = {}
        for i, (layer, src) in enumerate(zip(self.model, self.froms)):
            if src != -1:
                x = cache[src] if isinstance(src, int) else [x if j == -1 else cache[j] for j in src]
            x = layer(x)
            if i in self.save:
                cache[i] = x
        return x


def _parse_layers(arch: dict[str, Any], channels: int = 3) -> tuple[list[nn.Module], list, set[int]]:
    nc = int(arch["nc"])
    depth, width = float(arch.get("depth_multiple", 1.0)), float(arch.get("width_multiple", 1.0))
    max_channels = int(arch.get("max_channels", 1 << 30))
    scale, scales = None, arch.get("scales")
    if scales:  # YOLOv8-style table: {"scales": {"n": [depth, width, max_channels], ...}, "scale": "n"}
        scale = arch.get("scale") or next(iter(scales))  # Ultralytics also falls back to the first scale
        if scale not in scales:
            raise EdgekitError(f"YOLO scale '{scale}' is not one of {sorted(scales)}", fix="check the checkpoint's yaml")
        depth, width, max_channels = float(scales[scale][0]), float(scales[scale][1]), int(scales[scale][2])
    anchors = arch.get("anchors")
    legacy_head = not any(layer[2] == "C3k2" for layer in arch["backbone"] + arch["head"])  # YOLO11 has a depthwise head
    ch, layers, froms, save = [channels], [], [], set()
    for i, (src, repeats, kind, args) in enumerate(arch["backbone"] + arch["head"]):
        args = [nc if a == "nc" else anchors if a == "anchors" else None if a == "None" else a for a in args]
        repeats = max(round(repeats * depth), 1) if repeats > 1 else repeats
        kind = kind.removeprefix("nn.")
        if kind in _BLOCKS:
            block = _BLOCKS[kind]
            c1, c2 = ch[src], args[0]
            c2 = _make_divisible(min(c2, max_channels) * width, 8) if c2 != nc else c2
            args = [c1, c2, *args[1:]]
            if block in _REPEATED:
                args.insert(2, repeats)
                repeats = 1
            if block is C3k2 and scale in {"m", "l", "x"}:  # larger YOLO11 scales always use C3k blocks
                args[3:4] = [True]
        elif kind == "Upsample":
            block, c2 = nn.Upsample, ch[src]
        elif kind == "Concat":
            block, c2 = Concat, sum(ch[j] for j in src)
        elif kind == "Detect" and anchors is not None and len(args) > 1:
            block, c2 = Detect, None
            args = [args[0], args[1], [ch[j] for j in src]]
        elif kind == "Detect":
            block, c2 = DetectV8, None
            args = [args[0], [ch[j] for j in src], legacy_head]
        else:
            raise EdgekitError(f"unsupported YOLO layer type '{kind}' at layer {i}", fix="use a YOLOv5, YOLOv8 or YOLO11 architecture")
        module = nn.Sequential(*(block(*args) for _ in range(repeats))) if repeats > 1 else block(*args)
        layers.append(module)
        froms.append(src)
        save.update(j % i for j in ([src] if isinstance(src, int) else src) if j != -1)
        ch = ch[1:] if i == 0 else ch
        ch.append(c2)
    return layers, froms, save


MAX_PARAMETERS = 500_000_000  # YOLOv8x has 68 M, YOLOv5x6 141 M
_MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError, ZeroDivisionError, OverflowError, RuntimeError)


def _parse_checked(arch: dict[str, Any], source: Any) -> tuple[list[nn.Module], list, set[int]]:
    """The layers, after the table's bounds and its parameter count (built on the meta device: nothing allocated)."""
    check_architecture(arch, source)
    try:
        with torch.device("meta"):
            meta_layers, _, _ = _parse_layers(arch)
        count = sum(p.numel() for layer in meta_layers for p in layer.parameters())
        if count > MAX_PARAMETERS:
            raise EdgekitError(f"the architecture table describes {count:,} parameters (at most {MAX_PARAMETERS:,}): check depth_multiple, "
                               "width_multiple and the layers' channels", source, "use the checkpoint's own yaml table")
        del meta_layers
        return _parse_layers(arch)
    except _MALFORMED as exc:
        raise EdgekitError(f"malformed YOLO architecture table ({type(exc).__name__}: {exc})"[:300], source, "check the checkpoint's yaml") from exc


def build_model(arch: dict[str, Any], names: list[str] | None = None, source: Any = None) -> YoloModel:
    """Build an FP32 eval-mode YOLO model (random weights) and set its strides from a dry run.

    The table is bound-checked (``check_architecture``) and its parameters counted on the meta device first, so a
    hostile table fails with one line naming ``source`` and the key instead of allocating terabytes."""
    layers, froms, save = _parse_checked(arch, source)
    nc = int(arch["nc"])
    model = YoloModel(layers, froms, save, list(names) if names else [str(i) for i in range(nc)])
    head = model.head
    if not isinstance(head, (Detect, DetectV8)):
        raise EdgekitError(f"the architecture's last layer is {type(head).__name__}, not a Detect head", source, "use a YOLOv5, YOLOv8 or YOLO11 architecture")
    head.stride = torch.tensor([8.0, 16.0, 32.0][: head.nl])
    try:
        with torch.no_grad():
            probe = _feature_strides(model, 256)
    except _MALFORMED as exc:
        raise EdgekitError(f"the architecture table does not run: its layers do not fit together ({type(exc).__name__}: {exc})"[:300], source,
                           "check the checkpoint's yaml") from exc
    if len(probe) != head.nl:
        raise EdgekitError(f"the Detect head takes {len(probe)} feature maps but has {head.nl} levels", source, "check the checkpoint's yaml")
    head.stride = probe
    if isinstance(head, Detect):
        head.anchors /= head.stride.view(-1, 1, 1)
    elif isinstance(head, DetectV8):
        head.bias_init()
    return model.eval()


def _feature_strides(model: YoloModel, size: int) -> torch.Tensor:
    """Strides of the feature maps that enter the head, from a dry run."""
    captured: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda _m, inp: captured.extend(inp[0]))
    try:
        model.eval()(torch.zeros(1, 3, size, size))
    finally:
        hook.remove()
    return torch.tensor([size / f.shape[-2] for f in captured])


def model_from_checkpoint(ckpt: Checkpoint) -> YoloModel:
    """Build the architecture stored in ``ckpt`` and load its weights (as FP32) by key."""
    model = build_model(ckpt.architecture, ckpt.names, ckpt.source)
    expected = model.state_dict()
    state = {k: v for k, v in ckpt.state_dict.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise EdgekitError(
            f"weights do not match the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})",
            ckpt.source,
            "use the checkpoint the architecture table came from",
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise EdgekitError(f"shape mismatch for {key}: {tuple(tensor.shape)} vs {tuple(expected[key].shape)}", ckpt.source, "use matching weights")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return model.float().eval()
