"""ONNX Runtime (CPU): runs the ONNX files edgekit writes, FP32 and every quantized form, as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.backends.base import Backend, Built, Graph, Run
from edgekit.targets import Target


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    precisions = ("fp32", "int8", "int4", "dynamic")  # int4 and dynamic: families that make those forms (VLM decoders)
    suffixes = (".onnx",)
    install = "onnxruntime"
    runs_forms = True

    def placement(self):
        from edgekit.quantization.placement import ORT_PLACEMENT

        return ORT_PLACEMENT

    def build(self, graph: Graph, target: Target, run: Run) -> Built:
        from edgekit.backends.onnxruntime.builder import build

        return build(graph, target, run)

    def runner(self, path: str | Path, threads: int | None = None, **options: Any):
        from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, threads=threads, **options)
