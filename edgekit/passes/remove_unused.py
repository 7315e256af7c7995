"""``remove_unused``: drop nodes whose outputs nothing (transitively) reads, and unused initializers/value_info."""

from __future__ import annotations

import onnx

from edgekit.passes.base import GraphPass, node_reads, register_pass, set_repeated


@register_pass
class RemoveUnused(GraphPass):
    name = "remove_unused"
    description = "remove dead nodes (outputs never read) and unused initializers and value_info"

    def transform(self, model: onnx.ModelProto) -> onnx.ModelProto:
        g = model.graph
        graph_inputs = {i.name for i in g.input}
        live = {o.name for o in g.output}
        keep: list[bool] = [False] * len(g.node)
        for i in range(len(g.node) - 1, -1, -1):  # nodes are topologically sorted: walk back from the outputs
            node = g.node[i]
            if any(o in live for o in node.output if o):
                keep[i] = True
                live |= node_reads(node)
        set_repeated(g.node, [n for i, n in enumerate(g.node) if keep[i]])
        # an initializer that is also a graph input stays: removing it would make that input required
        set_repeated(g.initializer, [t for t in g.initializer if t.name in live or t.name in graph_inputs])
        set_repeated(g.sparse_initializer, [t for t in g.sparse_initializer if t.values.name in live or t.values.name in graph_inputs])
        existing = live | {o for n in g.node for o in n.output}
        set_repeated(g.value_info, [v for v in g.value_info if v.name in existing])
        return model
