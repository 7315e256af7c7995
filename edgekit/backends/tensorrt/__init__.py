"""TensorRT: the Q/DQ ONNX handed to TensorRT (explicit quantization from the run's shared ranges), its lint, build
config and ``trtexec`` command; the engine where TensorRT or trtexec exists (NVIDIA GPUs, Jetson)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgekit.backends.base import Backend, Built, Graph, Run
from edgekit.config import CreatedPathText, Strict
from edgekit.targets import Target


class TensorRTSpec(Strict):
    """Engine build settings (see edgekit.backends.tensorrt.engine.TensorRTBuildConfig)."""

    workspace_mb: int = Field(1024, ge=1)
    max_batch: int = Field(1, ge=1, description="optimization profile max batch (needs export.dynamic_batch when > 1)")
    timing_cache: CreatedPathText | None = Field(None, description="persisted timing cache file, reused across builds")
    dla_core: int | None = Field(None, ge=0, description="Jetson DLA core; layers DLA cannot run fall back to the GPU")
    builder_optimization_level: int | None = Field(None, ge=0, le=5)
    build: Literal["auto", "never"] = Field("auto", description="auto: build when TensorRT or trtexec exists; never: write the ONNX, config and trtexec command only")
    cost_model_device: str = Field("jetson-orin-nano-8gb", description="the device whose datasheet peaks price quantization.search "
                                   "candidates where TensorRT cannot run (edgekit.backends.tensorrt.cost.DEVICES)")


class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    suffixes = (".engine", ".plan")
    config = TensorRTSpec
    install = "tensorrt"

    def check_recipe(self, recipe) -> None:
        from edgekit.backends.tensorrt.cost import DEVICES

        if recipe.tensorrt.max_batch > 1 and not recipe.export.dynamic_batch:
            raise ValueError("tensorrt.max_batch > 1 needs export.dynamic_batch: true")
        if recipe.tensorrt.cost_model_device not in DEVICES:
            raise ValueError(f"tensorrt.cost_model_device {recipe.tensorrt.cost_model_device!r} is unknown: use one of {', '.join(DEVICES)}")

    def candidate_cost(self, graph: Graph, recipe) -> tuple[Any, str] | None:
        """The roofline cost model of ``edgekit.backends.tensorrt.cost`` (a CNN graph; TensorRT engines of other graphs
        are not built by edgekit yet). A built engine would be measured instead; this search never needs one."""
        from edgekit.backends.tensorrt.cost import TensorRTCostModel
        from edgekit.onnx_io import load_onnx

        if graph.kind != "cnn":
            return None
        model = TensorRTCostModel(load_onnx(graph.fp32), recipe.tensorrt.cost_model_device)
        return model, (f"cost model (edgekit.backends.tensorrt.cost): roofline of {model.device.name} datasheet peaks; model "
                       "milliseconds that rank candidates, not measured latency")

    def placement(self):
        from edgekit.quantization.placement import TENSORRT_PLACEMENT

        return TENSORRT_PLACEMENT

    def placement_for(self, kind: str):
        """CNNs: ``TENSORRT_PLACEMENT``; transformer towers: ``TENSORRT_TRANSFORMER_PLACEMENT`` (Linear layers only)."""
        from edgekit.quantization.placement import tensorrt_placement

        return tensorrt_placement(kind)

    def build(self, graph: Graph, target: Target, run: Run) -> Built:
        """Writes the ONNX, config and trtexec command everywhere; the engine only where TensorRT exists (else the
        target is reported as not built, with the command to build it on the device)."""
        from edgekit.backends.tensorrt.builder import build

        return build(graph, target, run)

    def runner(self, path: str | Path, threads: int | None = None, **options: Any):
        from edgekit.backends.tensorrt.runner import TensorRTRunner

        return TensorRTRunner(path, **options)
