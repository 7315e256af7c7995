"""A target: one engine to build and measure, ``backend:precision`` (plus options), parsed once from the recipe.

The job, the backends and the report compare ``Target`` values, never their names as strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from edgekit.config import Strict


class Target(Strict):
    """``backend:precision`` (e.g. ``openvino:int8``), or a mapping with options such as ``accuracy_control``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str
    precision: str = "fp32"
    accuracy_control: bool = Field(False, description="openvino:int8 only: NNCF quantize_with_accuracy_control held to the mAP50-95 budget")

    @classmethod
    def parse(cls, value: str | dict[str, Any] | Target) -> Target:
        """A target from ``backend:precision`` text, a mapping or a target."""
        if isinstance(value, Target):
            return value
        return cls.model_validate(cls.fields_of(value) if isinstance(value, str) else value)

    @staticmethod
    def fields_of(text: str) -> dict[str, str]:
        """``{"backend", "precision"}`` of ``backend:precision`` text (precision fp32 when left out)."""
        backend, _, precision = text.partition(":")
        return {"backend": backend, "precision": precision or "fp32"}

    @model_validator(mode="after")
    def _known(self) -> Target:
        from edgekit import registry

        backend = registry.backend(self.backend, context="targets")
        if self.precision not in backend.precisions:
            raise ValueError(f"{self.backend} has no precision {self.precision!r}: use one of {', '.join(backend.precisions)}")
        if self.accuracy_control and not (backend.accuracy_control and self.precision == "int8"):
            raise ValueError("accuracy_control applies to openvino:int8 only")
        return self

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.precision}" + ("+ac" if self.accuracy_control else "")

    @property
    def quantized(self) -> bool:
        """Any precision whose graphs come from edgekit's quantization (int8, int4, dynamic)."""
        return self.precision in ("int8", "int4", "dynamic")

    def __str__(self) -> str:
        return self.name


def reference_target(targets: list[Target], built: Mapping[Target, Mapping[str, Any]]) -> Target:
    """The one rule for the reference every budget and fidelity is measured against: the first built fp32 target,
    ONNX Runtime's before any other backend's, in recipe order; without a built fp32 target, the first built one."""
    ok = [t for t in targets if all(b.built for b in built[t].values())] or targets
    return min(ok, key=lambda t: (t.precision != "fp32", t.backend != "onnxruntime", ok.index(t)))
