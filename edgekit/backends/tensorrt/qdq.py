"""TensorRT explicit quantization: a Q/DQ placement TensorRT fuses, and a linter for NVIDIA's Q/DQ rules.

TensorRT (10/11, strongly typed) reads Q/DQ ONNX as *explicit* quantization: it runs a layer in INT8 only where
the graph says so, and it fuses ``DQ -> Conv/MatMul/Gemm (+ bias, + activation, + residual Add)`` into one INT8
kernel whose output is re-quantized by the next layer's Q. Its rules differ from ONNX Runtime's:

* activations: symmetric signed INT8, zero-point 0, per-tensor scale (ORT's placement uses uint8 with a zero-point);
* weights: INT8, symmetric, per output channel (Conv axis 0, ConvTranspose axis 1, MatMul/Gemm by layout);
* Q/DQ go on the *inputs* of the compute layers (and on the inputs of residual ``Add`` and ``Concat`` so they fuse),
  not on their outputs: pointwise ops (SiLU, ...) stay float and TensorRT fuses them into the preceding kernel;
* scales are build-time constants, positive and finite; every Q is immediately followed by a matching DQ.

``lint_qdq_for_tensorrt`` checks those rules on an ONNX model without TensorRT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from edgekit.quantization.graph import GraphIndex
from edgekit.quantization.placement import TENSORRT_PLACEMENT, build_spec, weight_axis
from edgekit.quantization.ptq import PTQResult, quantize_static
from edgekit.quantization.qdq import insert_qdq
from edgekit.quantization.spec import QuantSpec, Range

__all__ = ["TENSORRT_PLACEMENT", "LintIssue", "build_tensorrt_spec", "insert_qdq_for_tensorrt", "lint_qdq_for_tensorrt", "quantize_for_tensorrt", "weight_axis"]

QUANT_OPS = ("QuantizeLinear", "DequantizeLinear")
LINEAR_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_ALLOWED_QTYPES = {TensorProto.INT8: "int8", TensorProto.FLOAT8E4M3FN: "float8e4m3fn"}
_INT_TYPES = {TensorProto.INT32, TensorProto.INT64, TensorProto.UINT32, TensorProto.UINT64, TensorProto.INT16}


def build_tensorrt_spec(
    model: onnx.ModelProto, ranges: dict[str, Range], float_nodes: list[str], float_ops: list[str] | None = None, per_channel: bool = True
) -> QuantSpec:
    """The shared ``build_spec`` under ``TENSORRT_PLACEMENT``."""
    return build_spec(model, TENSORRT_PLACEMENT, ranges, float_nodes, list(float_ops or []), per_channel)


def insert_qdq_for_tensorrt(model: onnx.ModelProto, spec: QuantSpec, float_bias: bool = True) -> onnx.ModelProto:
    """``insert_qdq`` with float biases (TensorRT fuses a float bias into its INT8 kernel)."""
    return insert_qdq(model, spec, quantize_bias=not float_bias)


def quantize_for_tensorrt(
    model: onnx.ModelProto,
    images: list[Path],
    preprocess: Callable[[Path], dict[str, np.ndarray]],
    float_bias: bool = True,
    **kwargs,
) -> PTQResult:
    """``quantize_static`` under ``TENSORRT_PLACEMENT`` (lints clean with ``lint_qdq_for_tensorrt``)."""
    placement = TENSORRT_PLACEMENT if float_bias else replace(TENSORRT_PLACEMENT, float_bias=False)
    return quantize_static(model, images, preprocess, placement=placement, **kwargs)


# ----------------------------------------------------------------------------------------------------------- lint


@dataclass(frozen=True)
class LintIssue:
    """One violation of TensorRT's explicit-quantization rules: the node, the rule id and what is wrong."""

    node: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.node}: [{self.rule}] {self.message}"


RULES = {
    "opset": "the default-domain opset must be >= 13 (per-axis Q/DQ)",
    "scale-constant": "Q/DQ scales must be build-time constants",
    "scale-value": "Q/DQ scales must be positive and finite",
    "zero-point-constant": "Q/DQ zero-points must be build-time constants",
    "zero-point-dtype": "Q/DQ must be int8 (or fp8 e4m3): a zero-point of that type, or output_dtype on Q",
    "zero-point-zero": "TensorRT quantization is symmetric: every zero-point must be 0",
    "activation-per-tensor": "activation Q/DQ must be per-tensor (one scale)",
    "weight-axis": "per-channel weight Q/DQ must quantize the output-channel axis",
    "weight-scale-shape": "a per-channel weight scale needs one value per output channel",
    "weight-constant": "the DQ feeding a Conv/ConvTranspose/Gemm weight must read a constant (or Q of a constant)",
    "q-without-dq": "every QuantizeLinear must be consumed only by DequantizeLinear",
    "qdq-mismatch": "a Q and its DQ must use identical scale and zero-point",
    "int-path": "no Q/DQ on int32/int64 tensors, except a DQ of an int32 bias feeding a Conv/ConvTranspose/Gemm bias",
}


def _attr(node: onnx.NodeProto, name: str, default: int | None = None) -> int | None:
    return next((a.i for a in node.attribute if a.name == name), default)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor we can know (graph IO, value_info, initializers, shape inference)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model shape inference rejects still gets linted, with what the file declares
        inferred = model
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return {k: v for k, v in types.items() if v}


def lint_qdq_for_tensorrt(model: onnx.ModelProto) -> list[LintIssue]:
    """Check ``model``'s Q/DQ nodes against TensorRT's explicit-quantization rules; ``[]`` means clean."""
    issues: list[LintIssue] = []
    graph = model.graph
    index = GraphIndex(model)
    types = _elem_types(model)

    def add(node: onnx.NodeProto | str, rule: str, detail: str) -> None:
        name = node if isinstance(node, str) else (node.name or f"{node.op_type}->{node.output[0]}")
        issues.append(LintIssue(name, rule, f"{detail} ({RULES[rule]})"))

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        add("<model>", "opset", f"opset {opset}")

    def const(name: str) -> np.ndarray | None:
        return index.array(name) if name and index.is_constant(name) else None

    def qtype(node: onnx.NodeProto) -> int | None:
        """The quantized element type of a Q/DQ node: its zero-point's, Q's output_dtype, or DQ's input's."""
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] in index.initializers:
                return index.initializers[node.input[2]].data_type
            return types.get(node.input[2])
        if node.op_type == "QuantizeLinear":
            return _attr(node, "output_dtype", 0) or TensorProto.UINT8  # ONNX default: uint8
        return types.get(node.input[0])

    weight_use: dict[str, tuple[onnx.NodeProto, int]] = {}  # DQ output -> (linear node, input index)
    for node in graph.node:
        if node.op_type in LINEAR_OPS:
            for i in (1, 2):
                if len(node.input) > i and node.input[i]:
                    weight_use[node.input[i]] = (node, i)

    for node in graph.node:
        if node.op_type not in QUANT_OPS:
            continue
        x, scale_name = node.input[0], node.input[1]
        zp_name = node.input[2] if len(node.input) > 2 else ""
        is_dq = node.op_type == "DequantizeLinear"
        use = weight_use.get(node.output[0]) if is_dq else None
        x_type = types.get(x)

        # int32 / bias paths
        if is_dq and x_type == TensorProto.INT32:
            if use is None or use[1] != 2 or use[0].op_type not in ("Conv", "ConvTranspose", "Gemm"):
                add(node, "int-path", f"DequantizeLinear of int32 {x!r} that is not a Conv/ConvTranspose/Gemm bias")
            continue  # an int32 bias DQ follows the int32 rules (scale = input scale * weight scale), not int8's
        if not is_dq and x_type in _INT_TYPES:
            add(node, "int-path", f"QuantizeLinear of integer tensor {x!r}")
            continue

        scale = const(scale_name)
        if scale is None:
            add(node, "scale-constant", f"scale {scale_name!r} is computed at run time")
        elif scale.size == 0 or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            add(node, "scale-value", f"scale {scale_name!r} has values <= 0, inf or nan")

        dtype = qtype(node)
        if dtype not in _ALLOWED_QTYPES:
            name = TensorProto.DataType.Name(dtype) if dtype else "unknown"
            add(node, "zero-point-dtype", f"quantized type is {name.lower()}")
        if zp_name:
            zp = const(zp_name)
            if zp is None:
                add(node, "zero-point-constant", f"zero-point {zp_name!r} is computed at run time")
            elif np.any(zp.astype(np.float32) != 0):
                add(node, "zero-point-zero", f"zero-point {zp_name!r} is {zp.ravel()[:4].tolist()}")

        per_axis = scale is not None and scale.size > 1
        x_const = const(x)
        if is_dq and x_const is None and x in index.producer and index.producer[x].op_type == "QuantizeLinear":
            q_in = index.producer[x].input[0]
            x_const = const(q_in)  # Q(constant float weight) -> DQ: the weight is still constant
        is_weight = use is not None and use[1] == 1 and x_const is not None
        if is_dq and use is not None and use[1] == 1 and use[0].op_type in ("Conv", "ConvTranspose", "Gemm") and x_const is None:
            add(node, "weight-constant", f"weight input of {use[0].name or use[0].op_type} is not a constant")
        if not is_dq:  # a Q on a constant weight (Q -> DQ -> Conv) follows the weight rules of its DQ
            consumers = index.consumers.get(node.output[0], [])
            is_weight = const(x) is not None and any(weight_use.get(c.output[0], (None, 0))[1] == 1 for c in consumers)
            if is_weight:
                use = next(weight_use[c.output[0]] for c in consumers if c.output[0] in weight_use)
        if is_weight and per_axis:
            linear, _ = use
            w = x_const if x_const is not None else const(x)
            rank = w.ndim if w is not None else 2
            axis = _attr(node, "axis", 1)
            axis = axis + rank if axis < 0 else axis
            want = weight_axis(linear, rank)
            if axis != want:
                add(node, "weight-axis", f"axis={axis} on {linear.op_type} {linear.name!r} weight, expected axis={want}")
            elif w is not None and scale.size != w.shape[axis]:
                add(node, "weight-scale-shape", f"{scale.size} scales for {w.shape[axis]} output channels")
        elif per_axis and not is_weight:
            add(node, "activation-per-tensor", f"activation {x!r} has {scale.size} scales")

        if not is_dq:  # every Q is followed only by DQs with the same parameters
            consumers = index.consumers.get(node.output[0], [])
            if not consumers or any(c.op_type != "DequantizeLinear" for c in consumers) or node.output[0] in {o.name for o in graph.output}:
                add(node, "q-without-dq", f"{node.output[0]!r} is read by {[c.op_type for c in consumers] or 'nothing'}")
            for dq in (c for c in consumers if c.op_type == "DequantizeLinear"):
                if not _same_params(index, node, dq):
                    add(dq, "qdq-mismatch", f"differs from {node.name or node.output[0]!r}")
    return issues


def _same_params(index: GraphIndex, q: onnx.NodeProto, dq: onnx.NodeProto) -> bool:
    def params(node: onnx.NodeProto) -> tuple:
        out = []
        for i in (1, 2):
            name = node.input[i] if len(node.input) > i else ""
            if not name:
                out.append(None)
            elif index.is_constant(name):
                arr = index.array(name)
                out.append((str(arr.dtype), arr.shape, arr.tobytes()))
            else:
                out.append(("tensor", name))
        return (*out, _attr(node, "axis", 1) if out[0] and out[0][0] != "tensor" and np.prod(out[0][1]) > 1 else None)

    return params(q) == params(dq)

