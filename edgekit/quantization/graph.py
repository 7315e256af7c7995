"""Small read-only helpers over an ONNX graph: producers, consumers, initializers."""

from __future__ import annotations

from collections import defaultdict

import onnx
from onnx import numpy_helper


class GraphIndex:
    """Who produces and who consumes each tensor of a graph (built once, read many times)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.model = model
        self.initializers = {init.name: init for init in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.graph_outputs = {o.name for o in graph.output}
        self.graph_inputs = {i.name for i in graph.input}
        for node in graph.node:
            if node.op_type == "Constant":
                self.initializers.setdefault(node.output[0], node.attribute[0].t)

    def is_constant(self, name: str) -> bool:
        return name in self.initializers

    def array(self, name: str):
        return numpy_helper.to_array(self.initializers[name])
