"""TFLite / LiteRT: PyTorch -> ``.tflite`` with litert-torch (no TensorFlow), quantized with ai-edge-quantizer.

It converts from the PyTorch module a family gives each graph (``Graph.torch``), in the layout the family chose
(NHWC images; split outputs that must not share an int8 scale), so graphs without one are "not built".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgekit.backends.base import Backend, Built, Graph, Run
from edgekit.config import Strict
from edgekit.targets import Target


class TFLiteSpec(Strict):
    ranges: Literal["litert", "shared"] = Field(
        "litert",
        description="tflite:int8 activation ranges: ai-edge-quantizer's moving-average MinMax (litert), or the run's shared "
        "calibration ranges matched onto the TFLite tensors (shared); litert measured better on YOLOv5n",
    )
    qat_ranges: Literal["trained", "litert"] = Field(
        "trained",
        description="after QAT (quantization.mode: qat), tflite:int8 converts the trained weights and takes the activation "
        "ranges QAT trained, matched onto the TFLite tensors (trained), or ai-edge-quantizer's own on the trained weights (litert)",
    )


class LiteRTBackend(Backend):
    name = "tflite"
    precisions = ("fp32", "fp16", "dynamic", "int8")
    suffixes = (".tflite",)
    config = TFLiteSpec
    build_last = True  # litert-torch loads JAX, whose threads make a later fork (OpenVINO/NNCF tooling) unsafe
    needs_torch = True
    install = "tflite"
    times_candidates = True
    scores_candidates = True  # ai-edge-quantizer's own ranges: a candidate's loss is its own

    def build(self, graph: Graph, target: Target, run: Run) -> Built:
        from edgekit.backends.litert.builder import build

        return build(graph, target, run)

    def runner(self, path: str | Path, threads: int | None = None, **options: Any):
        from edgekit.backends.litert.runner import LiteRTRunner

        return LiteRTRunner(path, threads=threads, **options)

    def candidate_runner(self, path: Path, float_nodes: list[str], graph: Graph, threads: int, recipe) -> Any:
        """The ``tflite:int8`` model with ``float_nodes`` (ONNX patterns, mapped to the same modules) left float,
        quantized from one shared calibration (:mod:`edgekit.backends.litert.candidates`)."""
        from edgekit.backends.litert.candidates import candidate_runner

        return candidate_runner(path, float_nodes, graph, threads, recipe)
