"""What every backend builder gets and gives back.

A builder turns the shared artifacts of a run (the fused FP32 ONNX, the shared INT8 spec and Q/DQ model, the
PyTorch module, the calibration images) into one engine for one ``backend:precision`` target, and says how to
run it. Builders are registered by backend name in ``edgekit.backends.BUILDERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.recipe import Recipe, TargetSpec
from edgekit.runners.base import Runner


@dataclass
class BuildInputs:
    """The shared artifacts of one run, read by every builder."""

    recipe: Recipe
    stage: Path  # the run's staging folder; builders write under ``stage / <backend>/``
    family: Any
    fp32_onnx: Path
    torch_model: Any = None  # the fused FP32 torch module (LiteRT converts from PyTorch)
    int8_onnx: Path | None = None  # the shared Q/DQ ONNX (ORT placement) when an int8 target exists
    calibration_images: list[Path] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)  # ONNX nodes the shared spec keeps float (family decode + recipe's)
    calibrated_tensors: list[str] = field(default_factory=list)  # the shared calibration pass covers these tensors
    ranges: dict[str, Any] = field(default_factory=dict)  # ONNX tensor -> shared calibrated Range
    progress: Callable | None = None


@dataclass
class BuiltTarget:
    """One target's engine, or the reason it was not built (e.g. TensorRT on a machine without a GPU)."""

    target: TargetSpec
    path: Path | None  # the artifact measured (and whose sha256 the manifest records)
    make_runner: Callable[[], Runner] | None = None
    files: list[Path] = field(default_factory=list)  # every file this target wrote
    settings: dict[str, Any] = field(default_factory=dict)  # backend build/compile settings for the manifest
    not_built: str | None = None  # why there is nothing to measure
    notes: list[str] = field(default_factory=list)
    label: str | None = None  # report name when not ``target.name`` (benchmarks list peers this way)

    @property
    def name(self) -> str:
        return self.label or self.target.name

    @property
    def built(self) -> bool:
        return self.not_built is None
