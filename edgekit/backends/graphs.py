"""Per-graph builds for multi-graph families (the CLIP towers): the same backends, one graph at a time.

A graph build takes the graph's FP32 ONNX and, for int8 targets, the shared ORT int8 ONNX (static Q/DQ or
dynamic int8) and the graph's calibration feeds (OpenVINO calibrates with NNCF on the same samples).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.recipe import Recipe, TargetSpec
from edgekit.runners.base import Runner


@dataclass
class GraphInputs:
    """One graph of a run: its files and how its int8 form was made."""

    name: str  # e.g. "vision"
    fp32_onnx: Path
    int8_onnx: Path | None  # ORT's int8 graph; None when the graph stays float in int8 targets
    int8_mode: str  # static | dynamic | float
    calibration_feeds: Callable[[], list[dict[str, np.ndarray]]] | None = None
    torch_module: Any = None  # the FP32 PyTorch module (LiteRT converts from PyTorch)
    example_inputs: tuple = ()  # its example call arguments


@dataclass
class BuiltGraph:
    path: Path | None
    precision: str  # what this graph runs in within the target
    make_runner: Callable[[], Runner] | None = None
    files: list[Path] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    not_built: str | None = None


def _onnxruntime(recipe: Recipe, stage: Path, graph: GraphInputs, target: TargetSpec) -> BuiltGraph:
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    int8 = target.precision == "int8" and graph.int8_onnx is not None
    path = graph.int8_onnx if int8 else graph.fp32_onnx
    threads = recipe.benchmark.threads
    settings = {"execution_provider": "CPUExecutionProvider", "graph_optimization_level": "all", "intra_op_threads": threads}
    return BuiltGraph(path, graph.int8_mode if int8 else "fp32", lambda: OnnxRuntimeRunner(path, threads=threads), [path], settings)


def _openvino(recipe: Recipe, stage: Path, graph: GraphInputs, target: TargetSpec) -> BuiltGraph:
    from edgekit.backends.openvino.builder import VARIANTS, compiled_runner, convert_float_ir, precision_hint
    from edgekit.backends.openvino.nncf_quant import quantize_openvino_transformer

    spec = recipe.openvino
    int8 = target.precision == "int8" and graph.int8_mode != "float"
    name, compress, _ = VARIANTS[target.precision]
    hint = precision_hint(target.precision, spec.device)
    folder = stage / "openvino"
    folder.mkdir(exist_ok=True)
    ir_name = "model_fp32.xml" if target.precision == "int8" and not int8 else name  # a float tower in an int8 target
    xml = folder / ir_name.replace("model", graph.name, 1)
    settings: dict[str, Any] = {"device": spec.device, "precision_hint": hint, "ir": xml.name}
    if int8:
        feeds = graph.calibration_feeds() if graph.int8_mode == "static" and graph.calibration_feeds else None
        settings["nncf"] = quantize_openvino_transformer(graph.fp32_onnx, xml, feeds, graph.int8_mode)
    else:
        convert_float_ir(graph.fp32_onnx, xml, compress)
    make_runner, settings["compiled"] = compiled_runner(xml, recipe.benchmark.threads, hint, spec.device)
    precision = graph.int8_mode if int8 else ("fp32" if target.precision == "int8" else target.precision)
    return BuiltGraph(xml, precision, make_runner, [xml, xml.with_suffix(".bin")], settings)


def _litert():
    from edgekit.backends.litert import towers as litert_towers

    return litert_towers


def _unsupported(reason: str) -> Callable[..., BuiltGraph]:
    def build(recipe: Recipe, stage: Path, graph: GraphInputs, target: TargetSpec) -> BuiltGraph:
        return BuiltGraph(None, target.precision, not_built=reason)

    return build


GRAPH_BUILDERS: dict[str, Callable[[Recipe, Path, GraphInputs, TargetSpec], BuiltGraph]] = {
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
    "tflite": lambda *args: _litert().build_tower(*args),
    "tensorrt": _unsupported("TensorRT engines for transformer towers are not built by edgekit yet"),
}
