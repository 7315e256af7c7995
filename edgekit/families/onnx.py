"""The ``onnx`` family: a user's own ONNX model with image inputs (work in progress: see the helper's task)."""

from __future__ import annotations

from edgekit.families.base import Family


class OnnxModel(Family):
    name = "onnx"
