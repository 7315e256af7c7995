"""``infer_shapes``: ONNX shape inference with data propagation; a failure leaves the model unchanged."""

from __future__ import annotations

import logging

import onnx
from pydantic import Field

from edgekit.passes.base import GraphPass, PassConfig, register_pass

log = logging.getLogger(__name__)


def infer_shapes(model: onnx.ModelProto, data_prop: bool = True) -> onnx.ModelProto | None:
    """Return an inferred copy of ``model`` or None if inference fails (never raises)."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=data_prop)
    except Exception as exc:  # noqa: BLE001 -- inference is best effort (custom ops, >2 GB models, malformed graphs)
        log.warning("shape inference failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None


def static_shapes(model: onnx.ModelProto) -> tuple[dict[str, tuple[int, ...] | None], dict[str, int]]:
    """Per-tensor static shape (None when some dim is unknown) and element type, from inputs/outputs/value_info/initializers."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    types: dict[str, int] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None:
            continue
        if tt.elem_type:
            types[vi.name] = tt.elem_type
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            shapes[vi.name] = None if any(d is None for d in dims) else tuple(dims)
    graph_inputs = {i.name for i in g.input}
    for t in g.initializer:
        if t.name not in graph_inputs:
            shapes[t.name] = tuple(t.dims)
            types[t.name] = t.data_type
    return shapes, types


@register_pass
class InferShapes(GraphPass):
    name = "infer_shapes"
    description = "annotate tensor shapes and types (onnx.shape_inference with data propagation); tolerant of failure"

    class Config(PassConfig):
        data_prop: bool = Field(True, description="propagate constant shape values through Shape/Gather/Concat/...")

    def transform(self, model: onnx.ModelProto) -> onnx.ModelProto:
        inferred = infer_shapes(model, self.config.data_prop)
        return model if inferred is None else inferred
