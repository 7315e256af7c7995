"""A read-only index over an ONNX graph: producers, consumers, constants (initializers and Constant nodes)."""

from __future__ import annotations

from collections import defaultdict

import onnx
from onnx import numpy_helper

from edgekit.passes.base import initializer_map, producers


class GraphIndex:
    """Who produces and who consumes each tensor of a graph (built once, read many times)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.initializers = initializer_map(graph)
        self.producer = producers(graph)
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.initializers.setdefault(node.output[0], node.attribute[0].t)

    def is_constant(self, name: str) -> bool:
        return name in self.initializers

    def array(self, name: str):
        return numpy_helper.to_array(self.initializers[name])


def non_float_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes with a non-float input (shape and index arithmetic, masks as int/bool): never quantizable."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    return [n.name for n in model.graph.node if any(types.get(i, onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT for i in n.input if i)]
