"""``fuse_attention``: scaled dot-product attention subgraphs -> one ONNX Runtime ``MultiHeadAttention`` op.

ORT's own transformer optimizer does not match the attention of Hugging Face CLIP as exported by the TorchScript
exporter (scale applied to both q and k, or to the scores; the causal/padding mask added to the scores), so this
pass matches it directly, anchored at each ``Softmax``:

    Softmax(Add?(Mul?(MatMul(Mul?(Transpose[0,2,1,3](Reshape(q))), Mul?(Transpose[0,2,3,1](Reshape(k))))), mask))
    -> MatMul(., Transpose[0,2,1,3](Reshape(v))) -> Transpose[0,2,1,3] -> Reshape          (B, S, D)

becomes ``com.microsoft.MultiHeadAttention(q, k, v, attention_bias=mask, num_heads, scale)``. The projections (and
their int8 Q/DQ) are untouched. The op exists in ONNX Runtime only: run it on ORT targets' graphs, never on the
portable graph other backends convert.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgekit.passes.base import (
    GraphPass,
    constant_value,
    initializer_map,
    producers,
    register_pass,
    set_repeated,
    use_counts,
)

MS_DOMAIN = "com.microsoft"


def _perm(node: onnx.NodeProto | None) -> list[int] | None:
    if node is None or node.op_type != "Transpose":
        return None
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


class _Matcher:
    def __init__(self, g: onnx.GraphProto) -> None:
        self.g, self.inits, self.prods, self.uses = g, initializer_map(g), producers(g), use_counts(g)

    def const(self, name: str) -> np.ndarray | None:
        return constant_value(self.g, name, self.inits, self.prods)

    def scaled(self, tensor: str) -> tuple[str, float]:
        """Strip a scalar-constant Mul: (input, factor)."""
        node = self.prods.get(tensor)
        if node is not None and node.op_type == "Mul":
            for i, j in ((0, 1), (1, 0)):
                c = self.const(node.input[j])
                if c is not None and c.size == 1:
                    return node.input[i], float(c.reshape(()))
        return tensor, 1.0

    def heads_input(self, tensor: str, perm: list[int]) -> tuple[str, int] | None:
        """(B, S, D) tensor before Reshape(B, S, H, d) -> Transpose(perm), and d."""
        t = self.prods.get(tensor)
        if _perm(t) != perm:
            return None
        r = self.prods.get(t.input[0])
        if r is None or r.op_type != "Reshape":
            return None
        shape = self.const(r.input[1])
        if shape is None:
            concat = self.prods.get(r.input[1])
            if concat is None or concat.op_type != "Concat":
                return None
            parts = [self.const(i) for i in concat.input]
            head_dim = parts[-1] if len(parts) == 4 else None
        else:
            head_dim = shape[-1:] if shape.size == 4 else None
        if head_dim is None or int(head_dim.reshape(-1)[0]) <= 0:
            return None
        return r.input[0], int(head_dim.reshape(-1)[0])


def match(m: _Matcher, softmax: onnx.NodeProto) -> dict | None:
    """The attention around ``softmax``, or None."""
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        return None
    scores, mask = softmax.input[0], None
    node = m.prods.get(scores)
    if node is not None and node.op_type == "Add":
        a, b = node.input
        if m.prods.get(a) is not None and m.prods[a].op_type in ("Mul", "MatMul"):
            scores, mask = a, b
        else:
            scores, mask = b, a
    scores, scale = m.scaled(scores)
    qk = m.prods.get(scores)
    if qk is None or qk.op_type != "MatMul":
        return None
    (q_t, q_scale), (k_t, k_scale) = m.scaled(qk.input[0]), m.scaled(qk.input[1])
    q, k = m.heads_input(q_t, [0, 2, 1, 3]), m.heads_input(k_t, [0, 2, 3, 1])
    consumers = [n for n in m.g.node if softmax.output[0] in n.input]
    if q is None or k is None or len(consumers) != 1 or consumers[0].op_type != "MatMul" or consumers[0].input[0] != softmax.output[0]:
        return None
    av = consumers[0]
    v = m.heads_input(av.input[1], [0, 2, 1, 3])
    after = [n for n in m.g.node if av.output[0] in n.input]
    if v is None or len(after) != 1 or _perm(after[0]) != [0, 2, 1, 3]:
        return None
    out = [n for n in m.g.node if after[0].output[0] in n.input]
    if len(out) != 1 or out[0].op_type != "Reshape" or not (q[1] == k[1] == v[1]):
        return None
    return {"q": q[0], "k": k[0], "v": v[0], "mask": mask, "head_dim": q[1], "scale": scale * q_scale * k_scale, "output": out[0].output[0], "anchor": softmax.name}


@register_pass
class FuseAttention(GraphPass):
    name = "fuse_attention"
    description = "scaled dot-product attention -> com.microsoft.MultiHeadAttention (ONNX Runtime targets only)"

    class Config(GraphPass.Config):
        hidden_size: int | None = None  # q width; from ONNX shape inference when None

    def transform(self, model: onnx.ModelProto) -> onnx.ModelProto:
        g = model.graph
        m = _Matcher(g)
        found = [f for f in (match(m, n) for n in g.node if n.op_type == "Softmax") if f]
        if not found:
            return model
        replaced = {f["output"]: f for f in found}
        widths = {} if self.config.hidden_size else self._widths(model, {f["q"] for f in found})
        nodes = []
        for node in g.node:
            hit = next((replaced[o] for o in node.output if o in replaced), None)
            if hit is None:
                nodes.append(node)
                continue
            hidden = self.config.hidden_size or widths[hit["q"]]
            inputs = [hit["q"], hit["k"], hit["v"], "", "", hit["mask"] or ""]
            while inputs and not inputs[-1]:
                inputs.pop()
            nodes.append(helper.make_node(
                "MultiHeadAttention", inputs, [hit["output"]], name=f"{hit['anchor']}_MultiHeadAttention", domain=MS_DOMAIN,
                num_heads=hidden // hit["head_dim"], scale=float(hit["scale"]),
            ))
        set_repeated(g.node, self._topological(nodes, g))
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        from edgekit.passes.remove_unused import RemoveUnused

        return RemoveUnused().transform(model)

    @staticmethod
    def _widths(model: onnx.ModelProto, tensors: set[str]) -> dict[str, int]:
        """The last (hidden) dimension of each q tensor, from one ONNX shape inference of the model."""
        widths = {}
        for value in onnx.shape_inference.infer_shapes(model).graph.value_info:
            dims = value.type.tensor_type.shape.dim
            if value.name in tensors and dims and dims[-1].HasField("dim_value"):
                widths[value.name] = int(dims[-1].dim_value)
        if missing := tensors - set(widths):
            raise ValueError(f"fuse_attention: cannot read the hidden size of {sorted(missing)[0]}; set the pass option hidden_size")
        return widths

    @staticmethod
    def _topological(nodes: list[onnx.NodeProto], g: onnx.GraphProto) -> list[onnx.NodeProto]:
        """Kahn's order (the fused op reads q/k/v, which some graphs produce after the old Reshape's inputs)."""
        available = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
        pending, out = list(nodes), []
        while pending:
            rest = []
            for n in pending:
                if all(i in available for i in n.input):
                    out.append(n)
                    available.update(n.output)
                else:
                    rest.append(n)
            if len(rest) == len(pending):
                out.extend(rest)  # leave the remainder for onnx.checker to report
                break
            pending = rest
        return out
