"""TFLite / LiteRT: PyTorch -> ``.tflite`` with litert-torch (no TensorFlow), quantized with ai-edge-quantizer.

* Layout: the model is wrapped to take NHWC input (LiteRT's native layout); the runner transposes the contract's
  NCHW feed, so evaluators see the same interface as every other backend.
* Outputs: the detector's single (boxes | scores) tensor is split into two outputs, ``boxes`` (pixels) and
  ``scores`` (probabilities), so they never share one quantization scale.
* Precisions: ``fp32``; ``fp16`` (fp16 weights, float compute); ``dynamic`` (int8 weights, activations quantized
  at run time); ``int8`` (full integer: int8 weights and activations, ranges calibrated on the recipe's
  calibration images, the family's decode kept float as in the shared spec).

Ranges (``tflite.ranges``): ``litert`` (default) keeps ai-edge-quantizer's own calibration on the recipe's images, a
moving average of per-image min/max; ``shared`` replaces the range of every tensor that matches a tensor of the
run's shared calibration (``edgekit.backends.litert.ranges``), so LiteRT uses the same ranges as ORT and TensorRT.
On YOLOv5n (158 COCO images) ``litert`` measured -0.45 pt mAP50-95 and ``shared`` (percentile 99.99) -0.85 pt, so
``litert`` is the default. The manifest records which was used and how many tensors matched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.artifacts import atomic_path, sha256_file
from edgekit.backends.base import BuildInputs, BuiltTarget
from edgekit.errors import EdgekitError
from edgekit.profiling.device import package_version
from edgekit.recipe import TargetSpec

INSTALL_FIX = 'pip install -e ".[tflite]"'
SIGNATURE = "serving_default"


def _import(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise EdgekitError(f"{module.split('.')[0]} is not installed (needed for tflite targets)", fix=INSTALL_FIX) from exc


class SplitDetections:
    """Wraps a YOLO module so it returns ``(boxes, scores)`` instead of one concatenated tensor."""

    def __new__(cls, model, channel_axis: int):
        import torch

        class _SplitDetections(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x):
                y = self.model(x)
                return y.narrow(channel_axis, 0, 4), y.narrow(channel_axis, 4, y.shape[channel_axis] - 4)

        return _SplitDetections().eval()


def convert_fp32(torch_model, input_size: int, batch: int, anchor_based: bool, out_path: Path) -> Path:
    """Convert the (BN-fused, eval) YOLO module to an NHWC FP32 ``.tflite`` with ``boxes`` and ``scores`` outputs."""
    import torch

    litert_torch = _import("litert_torch")
    wrapped = litert_torch.to_channel_last_io(SplitDetections(torch_model, -1 if anchor_based else 1), args=[0]).eval()
    try:
        with _quiet_unless_interactive():
            edge_model = litert_torch.convert(wrapped, (torch.zeros(batch, input_size, input_size, 3),))
    except Exception as exc:
        raise EdgekitError(f"litert-torch cannot convert this model ({str(exc).splitlines()[0][:200]})", fix="report the failing op; fp32/int8 ONNX targets still work") from exc
    with atomic_path(out_path) as tmp, _quiet_unless_interactive():
        edge_model.export(str(tmp))
    return out_path


def float_regexes(family) -> list[str]:
    """Tensor-name patterns of the ops kept float: the head's decode and the output split.

    TFLite tensor names carry the PyTorch module path; the head's own ops (not its convs) are named
    ``...Detect_<i>;<n>``, the split ops ``..._SplitDetections_...;<n>``, the outputs ``serving_default_*``.
    """
    head = "Detect" if family.anchor_based else "DetectV8"
    return [rf".*\.{head}_{family.head_index};.*", r".*_SplitDetections[^/]*;.*", rf"{SIGNATURE}_.*"]


def quantize(fp32_path: Path, out_path: Path, precision: str, inputs: BuildInputs) -> dict:
    """Quantize ``fp32_path`` with ai-edge-quantizer into ``out_path``; returns the settings for the manifest."""
    _import("ai_edge_quantizer")
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    op = qtyping.TFLOperationName.ALL_SUPPORTED
    q = quantizer.Quantizer(str(fp32_path))
    settings: dict = {"tool": "ai-edge-quantizer", "version": package_version("ai-edge-quantizer")}
    calibration = None
    if precision == "fp16":
        config = qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True,
        )
        q.update_quantization_recipe(".*", op, config, AlgorithmName.FLOAT_CASTING)
        settings["recipe"] = "fp16 weights, float compute"
    elif precision == "dynamic":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        settings["recipe"] = "dynamic_wi8_afp32: int8 per-channel weights, activations quantized at run time"
    elif precision == "int8":
        q.add_static_config(regex=".*", operation_name=op, activation_num_bits=8, weight_num_bits=8)
        r = inputs.recipe.quantization
        kept = float_regexes(inputs.family) if r is not None and r.keep_float.head else []
        for regex in kept:
            q.update_quantization_recipe(regex, op, algorithm_key=AlgorithmName.NO_QUANTIZE)
        feeds, arg = [], _input_arg(fp32_path)
        for path in _track(inputs, inputs.calibration_images, "calibrate tflite:int8"):
            x = inputs.family.preprocess(path)[0][inputs.family.input_name]
            feeds.append({arg: np.ascontiguousarray(x.transpose(0, 2, 3, 1))})
        with _quiet_unless_interactive():  # ai-edge-quantizer's own tqdm bars flood non-interactive logs
            calibration = q.calibrate({SIGNATURE: feeds}, num_threads=inputs.recipe.benchmark.threads)
        shared = 0
        if inputs.recipe.tflite.ranges == "shared" and inputs.ranges and r is not None:
            from edgekit.backends.litert.ranges import apply_shared_ranges, match_tensors
            from edgekit.onnx_io import load_onnx

            first = inputs.family.preprocess(inputs.calibration_images[0])[0]
            matches = match_tensors(fp32_path, load_onnx(inputs.fp32_onnx), sorted(inputs.ranges), first)
            shared = apply_shared_ranges(calibration, matches, inputs.ranges)
        settings.update(
            recipe="static_wi8_ai8: int8 per-channel symmetric weights, int8 asymmetric activations",
            calibration={
                "images": len(feeds),
                "shared_ranges": shared,
                "activation_tensors": len(calibration),
                "method": (
                    f"shared {r.method if r else 'minmax'} ranges (matched by value to the ONNX tensors) for {shared} tensors, ai-edge-quantizer's moving-average MinMax for the rest"
                    if shared else "ai-edge-quantizer's moving-average MinMax over the calibration images (tflite.ranges: litert)"
                ),
            },
            float_regex=kept,
        )
    else:
        raise EdgekitError(f"tflite has no precision {precision!r}", fix="use fp32, fp16, dynamic or int8")
    with _quiet_unless_interactive():
        result = q.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(bytes(result.quantized_model))
    settings["quantization_recipe"] = result.recipe
    return settings


def _quiet_unless_interactive():
    import contextlib
    import io

    from edgekit import progress

    if progress.enabled():
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def _input_arg(fp32_path: Path) -> str:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(fp32_path))
    return next(iter(runner.get_signature_runner(SIGNATURE).get_input_details()))


def _track(inputs: BuildInputs, items: list, label: str):
    indices = inputs.progress(label, len(items)) if inputs.progress else range(len(items))
    return (items[i] for i in indices)


def build(inputs: BuildInputs, target: TargetSpec) -> BuiltTarget:
    """Build one ``tflite:<precision>`` target under ``stage/tflite/``."""
    from edgekit.backends.litert.runner import LiteRTRunner

    folder = inputs.stage / "tflite"
    folder.mkdir(exist_ok=True)
    fp32 = folder / "model_fp32.tflite"
    r = inputs.recipe
    if not fp32.is_file():
        convert_fp32(inputs.torch_model, r.model.input_size, r.model.batch, inputs.family.anchor_based, fp32)
    settings: dict = {"converter": {"tool": "litert-torch", "version": package_version("litert-torch"), "layout": "NHWC", "outputs": ["boxes", "scores"]}}
    path = fp32
    if target.precision != "fp32":
        path = folder / f"model_{target.precision}.tflite"
        settings["quantization"] = quantize(fp32, path, target.precision, inputs)
    input_name = inputs.family.input_name

    def make_runner() -> LiteRTRunner:
        return LiteRTRunner(path, threads=r.benchmark.threads, input_names=[input_name], output_names=["boxes", "scores"])

    with make_runner() as runner:
        settings["interpreter"] = {"runtime": "ai-edge-litert", "version": package_version("ai-edge-litert"), "delegate": "XNNPACK", "threads": r.benchmark.threads, "io_dtypes": runner.io_dtypes}
    notes = []
    q = r.quantization
    if target.precision == "int8" and q is not None and (q.keep_float.nodes or q.keep_float.op_types):
        notes.append("keep_float.nodes/op_types name ONNX nodes and are not applied to the tflite model (only the head decode is kept float)")
    if target.precision == "int8":
        notes.append(settings["quantization"]["calibration"]["method"])
    files = [fp32] + ([path] if path != fp32 else [])
    settings["sha256"] = {p.name: sha256_file(p) for p in files}
    return BuiltTarget(target, path, make_runner, files=files, settings=settings, notes=notes)


__all__ = ["build", "convert_fp32", "quantize", "SplitDetections"]
