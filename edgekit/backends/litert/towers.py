"""LiteRT (``tflite:<precision>``) builds of the CLIP towers: PyTorch -> ``.tflite`` with litert-torch, quantized
with ai-edge-quantizer, one graph at a time (``edgekit.backends.graphs.GRAPH_BUILDERS``).

* Conversion: from the tower's FP32 PyTorch module with named inputs and a named output (``pixel_values`` ->
  ``image_embeds``; ``input_ids``, ``attention_mask`` -> ``text_embeds``), so the ``.tflite`` signature carries the
  contract's names. litert-torch cannot export a dynamic batch for these towers (its JAX lowering needs concrete
  shapes) and a batch-1 graph cannot be resized (its reshapes are baked), so both graphs have batch 1: the runner
  feeds batches one row at a time.
* Vision takes NHWC (LiteRT's layout; the wrapper's permute cancels the converter's own transpose before the
  patch-embedding conv); the runner transposes the contract's NCHW feed, as for YOLO.
* Text has the fixed context length (77) and int32 ids and mask (litert-torch downcasts int64): the runner casts the
  contract's int64 and right-pads trimmed feeds with id 0, mask 0, which does not change the embedding (causal
  attention, pooled at the end token).
* Precisions: ``fp32``; ``fp16`` (fp16 weights, float compute); ``dynamic`` (int8 per-channel weights of every
  supported op, the text tower's token table included; activations quantized at run time); ``int8``: vision =
  static int8 on the weight FULLY_CONNECTED ops (int8 per-channel weights, int8 activations, MinMax ranges
  calibrated on the graph's calibration images) except the attention ``out_proj`` ops, which stay dynamic-range
  int8 (a static range on the attention output cost 2 points of minimum embedding cosine on TinyCLIP); LayerNorm,
  softmax, GELU, the attention BATCH_MATMULs and the patch conv stay float, as in the ONNX int8 graph. Text = dynamic
  int8 (also when the recipe asks ``clip.text_int8: static``, noted in the settings). A tower the recipe keeps float
  in int8 targets (``int8_mode: float``) stays fp32.

litert-torch loads JAX, whose threads make a later ``fork`` unsafe: build tflite targets after the others.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where used, so edgekit.backends.graphs can import build_tower at its top
    from edgekit.backends.graphs import BuiltGraph, GraphInputs
    from edgekit.recipe import Recipe, TargetSpec

SIGNATURE = "serving_default"
DYNAMIC_SCOPE = r"Linear_out_proj;\d+;$"  # op scope: output tensor names (PyTorch module paths), then ";"


def _tower(name: str):
    from edgekit.models.clip.family import TOWERS

    return next((t for t in TOWERS if t.name == name), None)


def _wrapped(module, tower):
    """The tower with named inputs (NHWC pixels) and a one-entry dict output: the ``.tflite`` signature's names."""
    import torch

    class Vision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = module

        def forward(self, pixel_values):
            return {"image_embeds": self.tower(pixel_values.permute(0, 3, 1, 2))}

    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = module

        def forward(self, input_ids, attention_mask):
            return {"text_embeds": self.tower(input_ids, attention_mask)}

    return {"vision": Vision, "text": Text}[tower.name]().eval()


def _sample(graph: GraphInputs, tower) -> dict[str, Any]:
    """Batch-1 keyword samples: NHWC pixels; text at the example's (full) context length."""
    samples = {n: x[:1] for n, x in zip(tower.input_names, graph.example_inputs)}
    if tower.name == "vision":
        samples = {n: x.permute(0, 2, 3, 1).contiguous() for n, x in samples.items()}
    return samples


def convert_tower(graph: GraphInputs, out_path: Path) -> dict[str, Any]:
    """The FP32 ``.tflite`` of one tower (kept when it exists); returns the converter settings."""
    import torch

    from edgekit.artifacts import atomic_path
    from edgekit.backends.litert.builder import _import, _quiet_unless_interactive
    from edgekit.profiling.device import package_version

    tower = _tower(graph.name)
    samples = _sample(graph, tower)
    if not out_path.is_file():
        litert_torch = _import("litert_torch")
        with torch.no_grad(), _quiet_unless_interactive():
            edge_model = litert_torch.convert(_wrapped(graph.torch_module, tower), sample_kwargs=samples)
        with atomic_path(out_path) as tmp, _quiet_unless_interactive():
            edge_model.export(str(tmp))
    return {
        "tool": "litert-torch",
        "version": package_version("litert-torch"),
        "layout": "NHWC" if tower.name == "vision" else "token ids",
        "input_shapes": {n: list(x.shape) for n, x in samples.items()},
        "batch": "static 1 (the runner feeds batches row by row)",
    }


def _calibration(graph: GraphInputs) -> list[dict[str, np.ndarray]]:
    """The graph's calibration feeds, one image each, NHWC (the vision tower's ``.tflite`` layout)."""
    feeds = []
    for feed in graph.calibration_feeds():
        for name, x in feed.items():
            feeds.extend({name: np.ascontiguousarray(row[None].transpose(0, 2, 3, 1), dtype=np.float32)} for row in np.asarray(x))
    return feeds


def quantize_tower(fp32: Path, out: Path, mode: str, graph: GraphInputs, threads: int | None) -> dict[str, Any]:
    """``fp16`` | ``dynamic`` | ``static`` (vision: the weight FULLY_CONNECTED ops, calibrated) into ``out``."""
    from edgekit.artifacts import atomic_path
    from edgekit.backends.litert.builder import _import, _quiet_unless_interactive, quantize
    from edgekit.errors import EdgekitError
    from edgekit.profiling.device import package_version

    if mode in ("fp16", "dynamic"):
        settings = quantize(fp32, out, mode, None)  # YOLO's recipes (only its int8 reads the build inputs)
        settings["fully_connected"] = fully_connected_modes(out)
        return settings
    _import("ai_edge_quantizer")
    from ai_edge_quantizer import qtyping, quantizer

    fc = qtyping.TFLOperationName.FULLY_CONNECTED
    q = quantizer.Quantizer(str(fp32))
    q.add_static_config(regex=".*", operation_name=fc, activation_num_bits=8, weight_num_bits=8)
    q.add_dynamic_config(regex=DYNAMIC_SCOPE, operation_name=fc, num_bits=8)  # the later config wins for these ops
    feeds = _calibration(graph)
    with _quiet_unless_interactive():  # ai-edge-quantizer's tqdm bars
        calibration = q.calibrate({SIGNATURE: feeds}, num_threads=threads or 1)
        result = q.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
    with atomic_path(out) as tmp:
        tmp.write_bytes(bytes(result.quantized_model))
    modes = fully_connected_modes(out)
    if not modes.get("static"):
        raise EdgekitError(f"no static int8 FULLY_CONNECTED op in the {graph.name} tower ({modes})")
    return {
        "tool": "ai-edge-quantizer",
        "version": package_version("ai-edge-quantizer"),
        "recipe": "static int8 on the weight FULLY_CONNECTED ops (int8 per-channel symmetric weights, int8 asymmetric activations), "
        "except the attention out_proj ops: dynamic-range int8 (int8 weights, activations quantized at run time); "
        "LayerNorm, softmax, GELU, the attention BATCH_MATMULs and the patch conv stay float",
        "why_out_proj_dynamic": "a static MinMax range on the attention output cost TinyCLIP 2 points of minimum image-embedding cosine "
        "(0.979 on 24 COCO images with 109 calibration images); dynamic there: 0.9993",
        "fully_connected": modes,
        "calibration": {"samples": len(feeds), "method": "ai-edge-quantizer's moving-average MinMax over the graph's calibration images"},
        "quantization_recipe": result.recipe,
    }


def fully_connected_modes(path: Path) -> dict[str, int]:
    """How the model's FULLY_CONNECTED ops run: ``static`` (int8 input and weights), ``dynamic`` (float input, int8
    weights), ``float`` (float or fp16-dequantized weights)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    model = tfl_flatbuffer_utils.read_model(str(path))
    int8, counts = schema.TensorType.INT8, {"static": 0, "dynamic": 0, "float": 0}
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.FULLY_CONNECTED:
                continue
            x, w = (graph.tensors[i].type for i in op.inputs[:2])
            counts["float" if w != int8 else "static" if x == int8 else "dynamic"] += 1
    return counts


def _why(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def _mode(graph: GraphInputs, target: TargetSpec) -> str:
    """What this tower runs in: fp32 | fp16 | dynamic | static."""
    if target.precision in ("fp32", "fp16", "dynamic"):
        return target.precision
    if graph.int8_mode == "float":
        return "fp32"
    return "static" if graph.name == "vision" else "dynamic"


def build_tower(recipe: Recipe, stage: Path, graph: GraphInputs, target: TargetSpec) -> BuiltGraph:
    """One tower of a ``tflite:<precision>`` target under ``stage/tflite/``; ``not_built`` when it cannot convert."""
    from edgekit.artifacts import sha256_file
    from edgekit.backends.graphs import BuiltGraph
    from edgekit.profiling.device import package_version
    from edgekit.backends.litert.runner import LiteRTRunner

    tower = _tower(graph.name)
    if tower is None or graph.torch_module is None or not graph.example_inputs:
        return BuiltGraph(None, target.precision, not_built=f"no PyTorch module for the {graph.name} graph (LiteRT converts from PyTorch)")
    missing = [name for name in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer") if find_spec(name) is None]
    if missing:
        return BuiltGraph(None, target.precision, not_built=f"{', '.join(missing)} not installed (pip install -e \".[tflite]\")")
    mode = _mode(graph, target)
    if mode == "static" and graph.calibration_feeds is None:
        return BuiltGraph(None, target.precision, not_built=f"no calibration samples for the {graph.name} tower's static int8")
    folder = stage / "tflite"
    folder.mkdir(exist_ok=True)
    fp32 = folder / f"{graph.name}_fp32.tflite"
    settings: dict[str, Any] = {}
    try:
        settings["converter"] = convert_tower(graph, fp32)
    except Exception as exc:  # litert-torch raises anything from torch.export, its JAX lowering or the MLIR converter
        return BuiltGraph(None, target.precision, not_built=f"litert-torch cannot convert the {graph.name} tower ({_why(exc)})")
    path = fp32
    if mode != "fp32":
        path = folder / f"{graph.name}_{mode}.tflite"
        try:
            settings["quantization"] = quantize_tower(fp32, path, mode, graph, recipe.benchmark.threads)
        except Exception as exc:
            return BuiltGraph(None, target.precision, not_built=f"ai-edge-quantizer cannot quantize the {graph.name} tower to {mode} ({_why(exc)})")
    if target.precision == "int8" and graph.name == "text" and graph.int8_mode == "static":
        settings["note"] = "clip.text_int8: static is built as dynamic int8 for LiteRT"
    threads = recipe.benchmark.threads

    def make_runner() -> LiteRTRunner:
        return LiteRTRunner(path, threads=threads, input_names=list(tower.input_names), output_names=[tower.output_name], pad_sequences=graph.name == "text")

    try:
        with make_runner() as runner:
            settings["interpreter"] = {
                "runtime": "ai-edge-litert", "version": package_version("ai-edge-litert"), "delegate": "XNNPACK", "threads": threads,
                "io_dtypes": runner.io_dtypes, "input_shapes": {m.name: list(m.shape) for m in runner.inputs},
            }
    except Exception as exc:
        return BuiltGraph(None, target.precision, not_built=f"LiteRT cannot load the {graph.name} tower ({_why(exc)})")
    files = [fp32] + ([path] if path != fp32 else [])
    settings["sha256"] = {p.name: sha256_file(p) for p in files}
    return BuiltGraph(path, mode, make_runner, files, settings)


__all__ = ["build_tower", "convert_tower", "quantize_tower"]
