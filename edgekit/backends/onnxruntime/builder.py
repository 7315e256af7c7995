"""ONNX Runtime: the fused FP32 ONNX, and the shared INT8 Q/DQ ONNX placed for ORT's QLinear fusions."""

from __future__ import annotations

from edgekit.backends.base import BuildInputs, BuiltTarget
from edgekit.recipe import TargetSpec


def build(inputs: BuildInputs, target: TargetSpec) -> BuiltTarget:
    """Nothing to convert: ORT runs the ONNX files the export and quantize stages wrote."""
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    path = inputs.int8_onnx if target.precision == "int8" else inputs.fp32_onnx
    threads = inputs.recipe.benchmark.threads
    settings = {"execution_provider": "CPUExecutionProvider", "graph_optimization_level": "all", "intra_op_threads": threads}
    return BuiltTarget(target, path, lambda: OnnxRuntimeRunner(path, threads=threads), files=[path], settings=settings)
