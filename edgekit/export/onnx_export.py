"""Export a PyTorch module to ONNX (BatchNorm folded), written atomically, and check it against PyTorch."""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgekit.artifacts import atomic_path
from edgekit.errors import EdgekitError


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` with every Conv2d followed by a BatchNorm2d attribute pair folded (eval mode)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(conv, bn)
            module.bn = nn.Identity()
    return fused


def export_onnx(
    model: nn.Module,
    sample: torch.Tensor,
    path: str | Path,
    opset: int = 17,
    dynamic_batch: bool = False,
    input_name: str = "images",
    output_names: tuple[str, ...] = ("output0",),
) -> Path:
    """Export ``model`` (BN folded) with the TorchScript exporter, which keeps module-scoped node names."""
    dynamic_axes = {input_name: {0: "batch"}, **{n: {0: "batch"} for n in output_names}} if dynamic_batch else None
    return export_module(fuse_batchnorm(model), (sample,), path, opset, (input_name,), output_names, dynamic_axes)


def export_module(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | Path,
    opset: int,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> Path:
    """Export ``module`` called on ``args`` with the TorchScript exporter, written atomically and checked by onnx."""
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
        onnx.checker.check_model(str(tmp))
    return path


@dataclass(frozen=True)
class ExportCheck:
    """How closely the ONNX model reproduces PyTorch on real inputs."""

    max_abs_error: float
    mean_abs_error: float
    max_rel_error: float
    tolerance: float
    samples: int

    @property
    def passed(self) -> bool:
        return self.max_rel_error <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def check_against_torch(model: nn.Module, onnx_path: str | Path, samples: list[np.ndarray] | list[dict[str, np.ndarray]], tolerance: float, threads: int = 2) -> ExportCheck:
    """Run PyTorch and ONNX Runtime on ``samples``; fail (EdgekitError) when the error exceeds ``tolerance``.

    A sample is one array (single-input models) or a feed (input name -> array, passed to PyTorch in input order).

    The tolerance applies to the max abs error relative to the output's magnitude, ``max|a-b| / max(1, max|a|)``,
    so pixel-valued and probability-valued outputs are judged alike.
    """
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    max_abs = max_rel = total = 0.0
    count = 0
    with OnnxRuntimeRunner(onnx_path, threads=threads) as runner, torch.no_grad():
        names = [i.name for i in runner.inputs]
        for sample in samples:
            feed = sample if isinstance(sample, dict) else {names[0]: sample}
            ref = model(*[torch.from_numpy(feed[n]) for n in names])
            refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
            outs = list(runner.infer(feed).values())
            for r, o in zip(refs, outs):
                r = r.numpy()
                err = np.abs(r.astype(np.float64) - o)
                max_abs = max(max_abs, float(err.max()))
                max_rel = max(max_rel, float(err.max() / max(1.0, np.abs(r).max())))
                total += float(err.mean())
                count += 1
    check = ExportCheck(max_abs, total / max(count, 1), max_rel, tolerance, len(samples))
    if not check.passed:
        Path(onnx_path).unlink(missing_ok=True)
        raise EdgekitError(
            f"ONNX output differs from PyTorch: max relative error {max_rel:.2e} > tolerance {tolerance:.1e}",
            onnx_path,
            "raise export.tolerance in the recipe or report the model to edgekit",
        )
    return check
