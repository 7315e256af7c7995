"""The INT8 spec: which tensors are quantized, with which parameters; written once, placed per backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Range:
    """Observed (or clipped) float range of one activation tensor."""

    low: float
    high: float


@dataclass(frozen=True)
class QParams:
    """Affine INT8 parameters: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    dtype: str = "uint8"

    @staticmethod
    def from_range(rng: Range, dtype: str = "uint8", symmetric: bool = False) -> QParams:
        low, high = min(rng.low, 0.0), max(rng.high, 0.0)
        if symmetric or dtype == "int8":
            bound = max(abs(low), abs(high), 1e-8)
            qmax = 127
            return QParams(float(np.float32(bound / qmax)), 0 if dtype == "int8" else 128, dtype)
        scale = float(np.float32(max(high - low, 1e-8) / 255.0))
        zero_point = int(np.clip(round(-low / scale), 0, 255))
        return QParams(scale, zero_point, dtype)


@dataclass
class QuantSpec:
    """What is quantized: activation tensors (by ONNX tensor name) and weight initializers (per-channel or not)."""

    activations: dict[str, QParams] = field(default_factory=dict)
    weights: dict[str, int | None] = field(default_factory=dict)  # initializer -> channel axis (None: per-tensor)
    float_nodes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "activations": {k: asdict(v) for k, v in sorted(self.activations.items())},
            "weights": dict(sorted(self.weights.items())),
            "float_nodes": sorted(self.float_nodes),
            "settings": self.settings,
        }
