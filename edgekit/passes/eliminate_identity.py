"""``eliminate_identity``: remove Identity, inference Dropout and statically no-op Reshape/Cast/Transpose nodes.

A removed node's readers are rewired to its input. When its output is a graph output, the producer of its input is
renamed instead, so graph output names stay intact (the node is kept if that is impossible).
"""

from __future__ import annotations

import onnx
from pydantic import Field

from edgekit.passes.base import (
    STANDARD_DOMAINS,
    GraphPass,
    PassConfig,
    constant_value,
    drop_if_unused,
    initializer_map,
    register_pass,
    set_repeated,
    subgraph_refs,
)
from edgekit.passes.shape_inference import infer_shapes, static_shapes


@register_pass
class EliminateIdentity(GraphPass):
    name = "eliminate_identity"
    description = "remove Identity, inference Dropout and no-op Reshape/Cast/Transpose nodes"

    class Config(PassConfig):
        static_noops: bool = Field(True, description="also remove Reshape/Cast/Transpose that provably do nothing")

    def transform(self, model: onnx.ModelProto) -> onnx.ModelProto:
        g = model.graph
        shapes: dict = {}
        types: dict = {}
        if self.config.static_noops:
            inferred = infer_shapes(model)
            if inferred is not None:
                shapes, types = static_shapes(inferred)
        inits = initializer_map(g)
        graph_inputs = {i.name for i in g.input}
        graph_outputs = {o.name for o in g.output}
        outer_refs = set().union(*(subgraph_refs(n) for n in g.node)) if len(g.node) else set()

        # index: tensor -> [(node index, input slot)], tensor -> producing node index
        readers: dict[str, list[tuple[int, int]]] = {}
        producer: dict[str, int] = {}
        for i, node in enumerate(g.node):
            for slot, name in enumerate(node.input):
                if name:
                    readers.setdefault(name, []).append((i, slot))
            for o in node.output:
                if o:
                    producer[o] = i

        used = set(readers) | graph_outputs | outer_refs
        removed: set[int] = set()
        dropped: set[str] = set()
        for i, node in enumerate(g.node):
            if not self._is_noop(g, node, inits, shapes, types, used):
                continue
            src, dst = node.input[0], node.output[0]
            if not src or src in outer_refs or dst in outer_refs:
                continue
            if dst not in graph_outputs:  # readers of dst read src instead
                moved = readers.pop(dst, [])
                for j, slot in moved:
                    g.node[j].input[slot] = src
                readers.setdefault(src, []).extend(moved)
            else:  # rename src's producer to dst; other readers of src follow
                p = producer.get(src)
                if p is None or src in graph_inputs or src in graph_outputs or src in inits:
                    continue  # keep this node so the graph output keeps its name
                prod = g.node[p]
                prod.output[list(prod.output).index(src)] = dst
                producer[dst] = p
                del producer[src]
                moved = [(j, slot) for j, slot in readers.pop(src, []) if j != i]
                for j, slot in moved:
                    g.node[j].input[slot] = dst
                readers.setdefault(dst, []).extend(moved)
                dropped.add(src)
            removed.add(i)
            dropped.update(x for x in node.input[1:] if x)
            dropped.update(o for o in node.output if o and o not in graph_outputs)
        if removed:
            set_repeated(g.node, [n for i, n in enumerate(g.node) if i not in removed])
            drop_if_unused(g, dropped)
        return model

    @staticmethod
    def _is_noop(g, node, inits, shapes, types, used) -> bool:
        if node.domain not in STANDARD_DOMAINS or not node.input or not node.output:
            return False
        op = node.op_type
        if op == "Identity":
            return True
        if op == "Dropout":
            if any(o in used for o in node.output[1:]):  # the mask is read
                return False
            if len(node.input) > 2 and node.input[2]:
                training = constant_value(g, node.input[2], inits)
                return training is not None and not bool(training)
            return True
        if not shapes and not types:
            return False
        src, dst = node.input[0], node.output[0]
        if op == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            return to is not None and types.get(src) == to
        if op == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if perm is not None:
                return perm == list(range(len(perm)))
            return shapes.get(src) is not None and len(shapes[src]) <= 1
        if op == "Reshape":
            return shapes.get(src) is not None and shapes.get(src) == shapes.get(dst)
        return False
