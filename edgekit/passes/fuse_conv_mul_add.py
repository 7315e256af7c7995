"""``fuse_conv_affine``: fold a per-channel constant Mul/Div/Add/Sub after a Conv (sole consumer) into the Conv.

The constant must broadcast along the output channel only: a scalar, ``[C]``-free shapes like ``[1]``, ``[C,1,1]``
or ``[1,C,1,1]``. Chains (Conv -> Mul -> Add) are folded step by step.
"""

from __future__ import annotations

import numpy as np
import onnx

from edgekit.passes.base import (
    STANDARD_DOMAINS,
    GraphPass,
    constant_value,
    drop_if_unused,
    initializer_map,
    producers,
    register_pass,
    set_repeated,
    use_counts,
)
from edgekit.passes.fuse_conv_bn import conv_params, set_conv_params

_OPS = ("Mul", "Add", "Div", "Sub")


def per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as a float64 vector of length ``channels`` if it only varies along dim 1 of a rank-``rank`` tensor."""
    if value.ndim > rank or value.dtype.kind != "f":
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,))


@register_pass
class FuseConvAffine(GraphPass):
    name = "fuse_conv_affine"
    description = "fold per-channel constant Mul/Div/Add/Sub after a Conv into its weights and bias"

    def transform(self, model: onnx.ModelProto) -> onnx.ModelProto:
        g = model.graph
        while self._fuse_once(g):
            pass
        return model

    @staticmethod
    def _fuse_once(g: onnx.GraphProto) -> bool:
        inits = initializer_map(g)
        prods = producers(g)
        uses = use_counts(g)
        graph_outputs = {o.name for o in g.output}
        removed: set[int] = set()
        replaced: list[str] = []
        fused_convs: set[str] = set()
        for index, node in enumerate(g.node):
            if node.op_type not in _OPS or node.domain not in STANDARD_DOMAINS or len(node.input) != 2:
                continue
            for pos in (0, 1) if node.op_type in ("Mul", "Add") else (0,):
                x, c = node.input[pos], node.input[1 - pos]
                conv = prods.get(x)
                if conv is None or conv.output[0] in fused_convs or uses.get(x, 0) != 1 or x in graph_outputs:
                    continue
                params = conv_params(g, conv, inits, prods)
                value = constant_value(g, c, inits, prods)
                if params is None or value is None or value.dtype != params[2]:
                    continue
                w, b, dtype = params
                v = per_channel(value, w.shape[0], w.ndim)
                if v is None or (node.op_type == "Div" and not np.all(v != 0)):
                    continue
                if node.op_type in ("Mul", "Div"):
                    k = v if node.op_type == "Mul" else 1.0 / v
                    w, b = w * k.reshape((-1,) + (1,) * (w.ndim - 1)), b * k
                else:
                    b = b + v if node.op_type == "Add" else b - v
                replaced += set_conv_params(g, conv, w, b, dtype)
                replaced += [c, x]
                conv.output[0] = node.output[0]
                fused_convs.add(node.output[0])
                removed.add(index)
                break
        if removed:
            set_repeated(g.node, [n for i, n in enumerate(g.node) if i not in removed])
            drop_if_unused(g, replaced)
        return bool(removed)
