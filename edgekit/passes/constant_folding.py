"""``constant_folding``: evaluate subgraphs whose inputs are all constants and store the results as initializers.

The foldable subgraph (plus ``Shape``/``Size`` of statically shaped tensors) is run once in ONNX Runtime
(falling back to ``onnx.reference``); results that would be much larger than the constants they are computed
from (``ConstantOfShape``, ``Expand``, ``Tile`` blow-ups) are left as ops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper
from pydantic import Field

from edgekit.passes.base import (
    STANDARD_DOMAINS,
    GraphPass,
    PassConfig,
    constant_node_value,
    drop_if_unused,
    initializer_map,
    register_pass,
    set_repeated,
    subgraph_refs,
    subgraphs,
)
from edgekit.passes.shape_inference import infer_shapes, static_shapes

log = logging.getLogger(__name__)

# random, sequence/optional-typed and side-effect-like ops are never folded
_NEVER = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SequenceAt", "SequenceLength",
    "SplitToSequence", "ConcatFromSequence", "Optional", "OptionalGetElement", "OptionalHasElement",
}


@dataclass
class _Plan:
    nodes: list[int] = field(default_factory=list)  # indices of foldable nodes, topological order
    known: dict[str, np.ndarray] = field(default_factory=dict)  # values known without running (Constant, static Shape)
    source_bytes: dict[str, int] = field(default_factory=dict)  # bytes of the initializers each constant derives from
    dummies: dict[str, np.ndarray] = field(default_factory=dict)  # empty stand-ins for CastLike's type-only input


def _np_dtype(elem_type: int | None) -> np.dtype | None:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)) if elem_type else None
    except Exception:  # noqa: BLE001 -- undefined or exotic element type
        return None


def _itemsize(elem_type: int) -> int:
    dtype = _np_dtype(elem_type)
    return 4 if dtype is None else dtype.itemsize


@register_pass
class ConstantFolding(GraphPass):
    name = "constant_folding"
    description = "precompute subgraphs whose inputs are all constants (and Shape of static tensors) into initializers"

    class Config(PassConfig):
        size_limit_bytes: int = Field(
            1 << 20, ge=0,
            description="a folded tensor larger than this is kept as an op unless it is no larger than its constant inputs",
        )
        fold_shapes: bool = Field(True, description="treat Shape/Size of tensors with fully static shapes as constants")

    def transform(self, model: onnx.ModelProto) -> onnx.ModelProto:
        g = model.graph
        inits = initializer_map(g)
        shapes: dict = {}
        types: dict = {}
        inferred = infer_shapes(model)
        if inferred is not None:
            shapes, types = static_shapes(inferred)
        blocked: set[int] = set()
        for _ in range(16):
            plan = self._plan(g, inits, shapes, types, blocked)
            if not plan.nodes:
                return model
            boundary = self._boundary(g, plan)
            values, failed = self._evaluate(model, plan, boundary, inits)
            if failed:
                blocked |= failed
                continue
            limit = self.config.size_limit_bytes
            too_big = {n for n, v in values.items() if v.nbytes > limit and v.nbytes > plan.source_bytes.get(n, 0)}
            if too_big:
                blocked |= {i for i in plan.nodes if set(g.node[i].output) & too_big}
                continue
            self._rewrite(g, plan, boundary, values)
            return model
        log.warning("constant folding gave up after repeated evaluation failures")
        return model

    # -- planning ---------------------------------------------------------------------------------------------

    def _plan(self, g, inits, shapes, types, blocked) -> _Plan:
        plan = _Plan()
        src: dict[str, int] = {name: t.ByteSize() for name, t in inits.items()}
        const = set(inits)
        limit = self.config.size_limit_bytes
        for i, node in enumerate(g.node):
            if i in blocked or node.domain not in STANDARD_DOMAINS or node.op_type in _NEVER or any(True for _ in subgraphs(node)):
                continue
            ins = [x for x in node.input if x]
            outs = [o for o in node.output if o]
            if all(x in const for x in ins):
                nbytes = sum(src.get(x, 0) for x in ins)
                # skip before evaluating when inference already shows a blow-up
                est = [np.prod(shapes[o], dtype=np.int64) * _itemsize(types.get(o, 1)) for o in outs if shapes.get(o) is not None]
                if any(e > limit and e > nbytes for e in est):
                    continue
                if node.op_type == "Constant":
                    value = constant_node_value(node)
                    if value is None:
                        continue
                    plan.known[node.output[0]] = value
            elif (
                self.config.fold_shapes
                and node.op_type in ("Shape", "Size")
                and node.input
                and shapes.get(node.input[0]) is not None
            ):
                dims = np.array(shapes[node.input[0]], dtype=np.int64)
                if node.op_type == "Size":
                    plan.known[node.output[0]] = np.array(int(np.prod(dims)), dtype=np.int64)
                else:
                    attrs = {a.name: a.i for a in node.attribute}
                    plan.known[node.output[0]] = dims[slice(attrs.get("start", 0), attrs.get("end", None))].copy()
                nbytes = 0
            elif (
                node.op_type == "CastLike"
                and len(node.input) == 2
                and node.input[0] in const
                and _np_dtype(types.get(node.input[1])) is not None
            ):  # the second input only gives the target type
                plan.dummies[node.input[1]] = np.zeros(0, dtype=_np_dtype(types[node.input[1]]))
                nbytes = src.get(node.input[0], 0)
            else:
                continue
            plan.nodes.append(i)
            const.update(outs)
            for o in outs:
                src[o] = nbytes
        plan.source_bytes = src
        return plan

    @staticmethod
    def _boundary(g, plan: _Plan) -> list[str]:
        """Outputs of folded nodes still read by the rest of the graph (or that are graph outputs)."""
        folded = set(plan.nodes)
        produced = {o for i in plan.nodes for o in g.node[i].output if o}
        needed: set[str] = {o.name for o in g.output} & produced
        for i, node in enumerate(g.node):
            if i in folded:
                continue
            needed |= ({x for x in node.input if x} | subgraph_refs(node)) & produced
        return [o for i in plan.nodes for o in g.node[i].output if o in needed]

    # -- evaluation -------------------------------------------------------------------------------------------

    def _evaluate(self, model, plan: _Plan, boundary: list[str], inits) -> tuple[dict[str, np.ndarray], set[int]]:
        g = model.graph
        values = {n: plan.known[n] for n in boundary if n in plan.known}
        todo = [n for n in boundary if n not in plan.known]
        run_nodes = [i for i in plan.nodes if not (set(g.node[i].output) & set(plan.known))]
        if not todo:
            return values, set()
        sub = self._submodel(model, [g.node[i] for i in run_nodes], todo, inits, {**plan.dummies, **plan.known})
        try:
            values.update(zip(todo, _run(sub)))
            return values, set()
        except Exception as exc:  # noqa: BLE001 -- find the node(s) that cannot be evaluated
            log.debug("folding subgraph failed (%s); evaluating node by node", exc)
        known = {**plan.dummies, **plan.known}
        known.update({n: numpy_helper.to_array(t) for n, t in inits.items()})
        failed: set[int] = set()
        for i in run_nodes:
            node = g.node[i]
            ins = [x for x in node.input if x]
            outs = [o for o in node.output if o]
            if not all(x in known for x in ins):
                continue  # downstream of a failure: re-planned next round
            sub = self._submodel(model, [node], outs, {}, {x: known[x] for x in ins})
            try:
                known.update(zip(outs, _run(sub)))
            except Exception:  # noqa: BLE001
                failed.add(i)
        if not failed:  # every node ran alone; treat the joint failure as unexplained and give up on all
            failed = set(run_nodes)
        return values, failed

    @staticmethod
    def _submodel(model, nodes, outputs, inits, known) -> onnx.ModelProto:
        needed = {x for n in nodes for x in n.input if x}
        tensors = [inits[n] for n in needed if n in inits]
        tensors += [numpy_helper.from_array(np.asarray(v), n) for n, v in known.items() if n in needed and n not in inits]
        graph = onnx.helper.make_graph(list(nodes), "fold", [], [onnx.ValueInfoProto(name=o) for o in outputs], tensors)
        sub = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
        sub.ir_version = model.ir_version
        return sub

    # -- rewriting --------------------------------------------------------------------------------------------

    @staticmethod
    def _rewrite(g, plan: _Plan, boundary: list[str], values: dict[str, np.ndarray]) -> None:
        graph_outputs = {o.name for o in g.output}
        folded = set(plan.nodes)
        read_by_folded = {x for i in plan.nodes for x in g.node[i].input if x}
        gone = {o for i in plan.nodes for o in g.node[i].output if o} - set(boundary)
        new_consts = []
        for name in boundary:
            tensor = numpy_helper.from_array(np.asarray(values[name]), name)
            if name in graph_outputs:  # keep graph outputs produced by a node
                new_consts.append(onnx.helper.make_node("Constant", [], [name], name=f"{name}_folded", value=tensor))
            else:
                g.initializer.append(tensor)
        set_repeated(g.node, new_consts + [n for i, n in enumerate(g.node) if i not in folded])
        set_repeated(g.value_info, [v for v in g.value_info if v.name not in gone])
        drop_if_unused(g, read_by_folded)


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    """Evaluate an input-less model with ONNX Runtime, falling back to the ONNX reference evaluator."""
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        outs = session.run(None, {})
    except Exception:  # noqa: BLE001 -- missing onnxruntime or an op it cannot run here
        from onnx.reference import ReferenceEvaluator

        outs = ReferenceEvaluator(model).run(None, {})
    result = []
    for v in outs:
        if not isinstance(v, np.ndarray | np.generic):
            raise TypeError(f"non-tensor constant ({type(v).__name__})")
        result.append(np.asarray(v))
    return result
