"""Backend builders: one module per backend turns the run's shared artifacts into that backend's engine.

``BUILDERS[backend](inputs, target) -> BuiltTarget``. Quantization is computed once (``edgekit.quantization``);
each builder places it its own way: ORT's fusable Q/DQ, TensorRT's explicit-quantization Q/DQ, NNCF for
OpenVINO, ai-edge-quantizer for LiteRT.
"""

from __future__ import annotations

from collections.abc import Callable

from edgekit.backends.base import BuildInputs, BuiltTarget
from edgekit.recipe import TargetSpec


def _lazy(module: str) -> Callable[[BuildInputs, TargetSpec], BuiltTarget]:
    def build(inputs: BuildInputs, target: TargetSpec) -> BuiltTarget:
        import importlib

        return importlib.import_module(f"edgekit.backends.{module}.builder").build(inputs, target)

    return build


BUILDERS: dict[str, Callable[[BuildInputs, TargetSpec], BuiltTarget]] = {
    "onnxruntime": _lazy("onnxruntime"),
    "openvino": _lazy("openvino"),
    "tflite": _lazy("litert"),
    "tensorrt": _lazy("tensorrt"),
}

__all__ = ["BUILDERS", "BuildInputs", "BuiltTarget"]
