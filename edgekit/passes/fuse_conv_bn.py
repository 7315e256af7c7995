"""``fuse_conv_bn``: fold an inference BatchNormalization into the Conv that feeds it (sole consumer).

W' = W * s[:, None, ...],  b' = (b - mean) * s + beta,  s = gamma / sqrt(var + eps); computed in float64.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.passes.base import (
    STANDARD_DOMAINS,
    GraphPass,
    constant_value,
    drop_if_unused,
    initializer_map,
    producers,
    register_pass,
    set_repeated,
    unique_name,
    use_counts,
)


def set_conv_params(graph: onnx.GraphProto, conv: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray, dtype) -> list[str]:
    """Give ``conv`` new weight/bias initializers (fresh names: the old ones may be shared). Returns the replaced names."""
    old = [x for x in conv.input[1:3] if x]
    base = conv.name or conv.output[0]
    w_name = unique_name(graph, f"{base}.weight_fused")
    b_name = unique_name(graph, f"{base}.bias_fused")
    graph.initializer.append(numpy_helper.from_array(weight.astype(dtype), w_name))
    graph.initializer.append(numpy_helper.from_array(bias.astype(dtype), b_name))
    del conv.input[1:]
    conv.input.extend([w_name, b_name])
    return old


def conv_params(graph, conv, inits, prods) -> tuple[np.ndarray, np.ndarray, np.dtype] | None:
    """Constant (W, b) of a standard Conv as float64 (b zeros when absent) and W's dtype, else None."""
    if conv.op_type != "Conv" or conv.domain not in STANDARD_DOMAINS or len(conv.input) < 2:
        return None
    w = constant_value(graph, conv.input[1], inits, prods)
    if w is None or w.dtype.kind != "f" or w.ndim < 3:
        return None
    if len(conv.input) > 2 and conv.input[2]:
        b = constant_value(graph, conv.input[2], inits, prods)
        if b is None or b.shape != (w.shape[0],):
            return None
    else:
        b = np.zeros(w.shape[0], dtype=w.dtype)
    return w.astype(np.float64), b.astype(np.float64), w.dtype


@register_pass
class FuseConvBN(GraphPass):
    name = "fuse_conv_bn"
    description = "fold BatchNormalization (inference) into the preceding Conv's weights and bias"

    def transform(self, model: onnx.ModelProto) -> onnx.ModelProto:
        g = model.graph
        inits = initializer_map(g)
        prods = producers(g)
        uses = use_counts(g)
        graph_outputs = {o.name for o in g.output}
        removed: set[int] = set()
        replaced: list[str] = []
        for index, bn in enumerate(g.node):
            if bn.op_type != "BatchNormalization" or bn.domain not in STANDARD_DOMAINS or len(bn.input) != 5:
                continue
            if any(o for o in bn.output[1:]) or any(a.name == "training_mode" and a.i for a in bn.attribute):
                continue
            conv = prods.get(bn.input[0])
            if conv is None or uses.get(bn.input[0], 0) != 1 or bn.input[0] in graph_outputs:
                continue
            params = conv_params(g, conv, inits, prods)
            stats = [constant_value(g, x, inits, prods) for x in bn.input[1:]]
            if params is None or any(s is None or s.size not in (1, params[0].shape[0]) for s in stats):
                continue
            w, b, dtype = params
            gamma, beta, mean, var = (np.broadcast_to(s.astype(np.float64).reshape(-1), b.shape) for s in stats)
            eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            scale = gamma / np.sqrt(var + eps)
            weight = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
            replaced += set_conv_params(g, conv, weight, (b - mean) * scale + beta, dtype)
            replaced += list(bn.input[1:])
            replaced.append(conv.output[0])  # its value_info is stale now
            conv.output[0] = bn.output[0]
            prods[bn.output[0]] = conv
            removed.add(index)
        if removed:
            set_repeated(g.node, [n for i, n in enumerate(g.node) if i not in removed])
            drop_if_unused(g, replaced)
        return model
