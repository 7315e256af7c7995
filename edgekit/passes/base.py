"""Graph passes over ONNX ``ModelProto``: small registered units with typed pydantic configs (Olive style).

A pass never mutates the model it is given and never changes the names or order of graph inputs and outputs.
The helpers below are shared by the pass modules (constant lookup, use counting, tensor renaming, cleanup).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
from onnx import numpy_helper
from pydantic import BaseModel, ConfigDict, ValidationError

from edgekit.errors import EdgekitError

STANDARD_DOMAINS = ("", "ai.onnx")

_REGISTRY: dict[str, type[GraphPass]] = {}


class PassConfig(BaseModel):
    """Base of every pass config: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GraphPass:
    """One graph transformation. Subclasses set ``name``/``description``, may define ``Config`` and implement ``transform``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    class Config(PassConfig):
        pass

    def __init__(self, config: GraphPass.Config | dict | None = None) -> None:
        if isinstance(config, self.Config):
            self.config = config
            return
        try:
            self.config = self.Config.model_validate(config or {})
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "<config>"
            if err["type"] == "extra_forbidden":
                fields = ", ".join(self.Config.model_fields) or "none"
                raise EdgekitError(f"unknown option '{key}' for pass '{self.name}'", fix=f"known options: {fields}") from exc
            raise EdgekitError(f"bad value for option '{key}' of pass '{self.name}': {err['msg']}", fix="correct the value") from exc

    def apply(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """Return a transformed copy of ``model`` (the argument is left untouched)."""
        work = onnx.ModelProto()
        work.CopyFrom(model)
        out = self.transform(work)
        before = (io_names(model.graph.input), io_names(model.graph.output))
        after = (io_names(out.graph.input), io_names(out.graph.output))
        if before != after:  # a bug in the pass, not a user error
            raise RuntimeError(f"pass '{self.name}' changed graph inputs/outputs: {before} -> {after}")
        return out

    def transform(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """Transform ``model`` (a private copy, may be modified in place) and return the result."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


@dataclass
class PassResult:
    name: str
    nodes_before: int
    nodes_after: int
    initializers_before: int
    initializers_after: int
    seconds: float

    @property
    def changed(self) -> bool:
        return (self.nodes_before, self.initializers_before) != (self.nodes_after, self.initializers_after)

    def summary(self) -> str:
        return (
            f"{self.name}: nodes {self.nodes_before} -> {self.nodes_after}, "
            f"initializers {self.initializers_before} -> {self.initializers_after} ({self.seconds:.2f}s)"
        )


def register_pass(cls: type[GraphPass]) -> type[GraphPass]:
    """Class decorator adding a pass to the registry under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, GraphPass)):
        raise TypeError("register_pass decorates GraphPass subclasses")
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a pass named '{cls.name}' is already registered ({_REGISTRY[cls.name].__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def available_passes() -> list[str]:
    return sorted(_REGISTRY)


def get_pass(name: str, config: GraphPass.Config | dict | None = None) -> GraphPass:
    cls = _REGISTRY.get(name)
    if cls is None:
        raise EdgekitError(f"unknown pass '{name}'", fix=f"use one of: {', '.join(available_passes())}")
    return cls(config)


# ----------------------------------------------------------------------------------------------- graph helpers


def io_names(values) -> list[str]:
    return [v.name for v in values]


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def subgraph_refs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from enclosing scopes."""
    refs: set[str] = set()
    for g in subgraphs(node):
        local = {i.name for i in g.input} | {i.name for i in g.initializer}
        for n in g.node:
            local.update(n.output)
        for n in g.node:
            refs.update(x for x in n.input if x and x not in local)
            refs.update(r for r in subgraph_refs(n) if r not in local)
        refs.update(o.name for o in g.output if o.name not in local)
    return refs


def node_reads(node: onnx.NodeProto) -> set[str]:
    return {x for x in node.input if x} | subgraph_refs(node)


def use_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """How many times each tensor is read (node inputs, subgraph references, graph outputs)."""
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in list(node.input) + sorted(subgraph_refs(node)):
            if name:
                counts[name] = counts.get(name, 0) + 1
    for out in graph.output:
        counts[out.name] = counts.get(out.name, 0) + 1
    return counts


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output if o}


def initializer_map(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers that are true constants (an initializer also listed as a graph input can be overridden)."""
    inputs = {i.name for i in graph.input}
    return {t.name: t for t in graph.initializer if t.name not in inputs}


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node (None for sparse or string-list forms)."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_floats"):
            return np.array(onnx.helper.get_attribute_value(attr), dtype=np.float32)
        if attr.name in ("value_int", "value_ints"):
            return np.array(onnx.helper.get_attribute_value(attr), dtype=np.int64)
    return None


def constant_value(graph: onnx.GraphProto, name: str, inits=None, prods=None) -> np.ndarray | None:
    """The value of ``name`` if it is a constant initializer or the output of a ``Constant`` node, else None."""
    inits = initializer_map(graph) if inits is None else inits
    if name in inits:
        return numpy_helper.to_array(inits[name])
    prods = producers(graph) if prods is None else prods
    node = prods.get(name)
    if node is not None and node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
        return constant_node_value(node)
    return None


def unique_name(graph: onnx.GraphProto, base: str, taken: set[str] | None = None) -> str:
    if taken is None:
        taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def drop_if_unused(graph: onnx.GraphProto, names) -> None:
    """Remove initializers and ``Constant`` nodes among ``names`` that nothing reads any more."""
    names = set(names)
    if not names:
        return
    counts = use_counts(graph)
    graph_inputs = {i.name for i in graph.input}
    dead = {n for n in names if counts.get(n, 0) == 0 and n not in graph_inputs}
    if not dead:
        return
    set_repeated(graph.initializer, [t for t in graph.initializer if t.name not in dead])
    set_repeated(graph.node, [n for n in graph.node if not (n.op_type == "Constant" and len(n.output) == 1 and n.output[0] in dead)])
    set_repeated(graph.value_info, [v for v in graph.value_info if v.name not in dead])


def set_repeated(field, items) -> None:
    """Replace the contents of a repeated protobuf field (nodes, initializers, value_info) with ``items``."""
    items = list(items)
    if len(items) == len(field) and all(a is b for a, b in zip(items, field)):
        return
    del field[:]
    field.extend(items)
