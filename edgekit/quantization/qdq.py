"""Insert QuantizeLinear/DequantizeLinear pairs into an ONNX graph according to a ``QuantSpec``.

Activations get a Q->DQ pair right after their producer, and every consumer reads the dequantized value.
Weights are quantized offline to int8 (symmetric, per output channel), biases of quantized convolutions to int32
with ``scale = input_scale * weight_scale``. The result is a standard Q/DQ ONNX model that every backend reads.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.quantization.graph import GraphIndex
from edgekit.quantization.spec import QuantSpec

_NP = {"uint8": np.uint8, "int8": np.int8}


def quantize_weight(weight: np.ndarray, axis: int | None, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization (range -qmax..qmax, 127 or 63 for a 7-bit range) per channel along ``axis`` (or per tensor)."""
    w = weight.astype(np.float64)
    if axis is None:
        bound = np.abs(w).max(keepdims=False)
    else:
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        bound = np.abs(w).max(axis=reduce)
    scale = (np.maximum(bound, 1e-12) / float(qmax)).astype(np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.rint(w / scale.astype(np.float64).reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def _const(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def insert_qdq(model: onnx.ModelProto, spec: QuantSpec, quantize_bias: bool = True) -> onnx.ModelProto:
    """Return a copy of ``model`` with Q/DQ nodes placed as ``spec`` says (opset >= 13).

    ``quantize_bias=False`` keeps conv biases float (TensorRT fuses float biases into its INT8 kernels).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index = GraphIndex(out)
    new_nodes: dict[str, list[onnx.NodeProto]] = {}  # producer output -> nodes inserted after it

    rename: dict[str, str] = {}
    for tensor, qp in spec.activations.items():
        q_name, dq_name = f"{tensor}_Q", f"{tensor}_DQ"
        scale = _const(graph, f"{tensor}_scale", np.array(qp.scale, dtype=np.float32))
        zp = _const(graph, f"{tensor}_zero_point", np.array(qp.zero_point, dtype=_NP[qp.dtype]))
        nodes = [
            helper.make_node("QuantizeLinear", [tensor, scale, zp], [q_name], name=f"{tensor}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [q_name, scale, zp], [dq_name], name=f"{tensor}_DequantizeLinear"),
        ]
        new_nodes.setdefault(tensor, []).extend(nodes)
        rename[tensor] = dq_name

    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]

    weight_nodes: list[onnx.NodeProto] = []
    for node in list(graph.node):
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        w_name = node.input[1] if len(node.input) > 1 else ""
        if w_name not in spec.weights or w_name not in index.initializers:
            continue
        axis = spec.weights[w_name]
        q, scale = quantize_weight(index.array(w_name), axis, int(spec.settings.get("weight_qmax", 127)))
        prefix = f"{node.name}_weight"
        qw = _const(graph, f"{prefix}_quantized", q)
        sc = _const(graph, f"{prefix}_scale", scale if axis is not None else scale.reshape(()))
        zp = _const(graph, f"{prefix}_zero_point", np.zeros_like(scale, dtype=np.int8) if axis is not None else np.int8(0))
        attrs = {"axis": axis} if axis is not None else {}
        weight_nodes.append(helper.make_node("DequantizeLinear", [qw, sc, zp], [f"{prefix}_DQ"], name=f"{prefix}_DequantizeLinear", **attrs))
        node.input[1] = f"{prefix}_DQ"
        if quantize_bias and node.op_type == "Conv" and len(node.input) > 2 and node.input[2] in index.initializers:
            x_name = node.input[0].removesuffix("_DQ")
            if x_name in spec.activations:
                bias = index.array(node.input[2]).astype(np.float64)
                b_scale = (np.float64(spec.activations[x_name].scale) * scale.astype(np.float64)).astype(np.float32)
                b_scale = np.broadcast_to(b_scale, bias.shape).copy()
                qb = np.clip(np.rint(bias / b_scale), -(2**31), 2**31 - 1).astype(np.int32)
                qbn = _const(graph, f"{node.name}_bias_quantized", qb)
                bsn = _const(graph, f"{node.name}_bias_scale", b_scale)
                bzn = _const(graph, f"{node.name}_bias_zero_point", np.zeros_like(qb))
                weight_nodes.append(helper.make_node("DequantizeLinear", [qbn, bsn, bzn], [f"{node.name}_bias_DQ"], name=f"{node.name}_bias_DequantizeLinear", axis=0))
                node.input[2] = f"{node.name}_bias_DQ"

    ordered: list[onnx.NodeProto] = list(weight_nodes)
    for name in (i.name for i in graph.input):
        ordered.extend(new_nodes.pop(name, []))
    for node in graph.node:
        ordered.append(node)
        for o in node.output:
            ordered.extend(new_nodes.pop(o, []))
    for leftover in new_nodes.values():  # tensors produced by initializers or constants
        ordered[:0] = leftover
    del graph.node[:]
    graph.node.extend(ordered)
    _drop_unused_initializers(graph)
    return out


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
