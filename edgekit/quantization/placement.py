"""Where Q/DQ pairs go. One quantization description, placed per backend.

ONNX Runtime fuses ``DQ -> op -> Q`` groups into integer kernels (QLinearConv, QLinearSigmoid, QLinearMul,
QLinearAdd, QLinearConcat, int8 MaxPool). A Conv whose output is not re-quantized is *not* fused: it runs as DQ +
float Conv, slower than FP32. So the ORT placement quantizes whole islands (Conv, its SiLU's Sigmoid and Mul,
residual Adds, Concats, pools, resizes), which keeps data in uint8 between convolutions.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import onnx

from edgekit.quantization.graph import GraphIndex
from edgekit.quantization.spec import QParams, QuantSpec, Range

WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def weight_axis(node: onnx.NodeProto, weight_rank: int = 2) -> int:
    """The output-channel axis of ``node``'s weight input (input 1), for per-channel weight quantization."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":  # B is (K, N), or (N, K) with transB=1
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    if node.op_type == "MatMul":  # B is (..., K, N): output channels on the last axis
        return max(weight_rank - 1, 0)
    raise ValueError(f"{node.op_type} has no weight axis")


@dataclass(frozen=True)
class Placement:
    """A backend's placement rules."""

    name: str
    ops: frozenset[str]
    activation_dtype: str = "uint8"
    fixed_ranges: dict[str, Range] = field(default_factory=dict)  # op type -> output range known a priori
    shared_io: frozenset[str] = frozenset()  # ops whose output reuses the input's parameters
    float_bias: bool = False  # keep biases float (TensorRT) instead of int32 Q/DQ (ONNX Runtime's QLinearConv)
    weighted_only: frozenset[str] = frozenset()  # ops quantized only when input 1 is a constant weight


ORT_PLACEMENT = Placement(
    name="onnxruntime",
    ops=frozenset({"Conv", "Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize"}),
    fixed_ranges={"Sigmoid": Range(0.0, 1.0)},
    shared_io=frozenset({"MaxPool", "Resize"}),
)
# TensorRT: Q/DQ on the inputs of compute layers (and of residual Adds and Concats, so they fuse); SiLU, pools and
# resizes stay float (TensorRT fuses pointwise ops into the conv); symmetric int8 activations; float biases.
TENSORRT_PLACEMENT = Placement(
    name="tensorrt", ops=frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Concat"}), activation_dtype="int8", float_bias=True
)
# Transformers: only the weight MatMuls/Gemms (projections, MLP), u8 activations x s8 weights for ORT's
# QLinearMatMul / MatMulIntegerToFloat; attention's activation x activation MatMuls, Softmax, LayerNorm, GELU and
# the patch-embedding Conv stay float.
TRANSFORMER_PLACEMENT = Placement(name="transformer", ops=frozenset({"MatMul", "Gemm"}), weighted_only=frozenset({"MatMul", "Gemm"}))
# Every float op of a transformer (both kinds of MatMul, residual and bias Adds, Softmax, LayerNorm, GELU's Erf...):
# faster on ORT than the weight MatMuls alone, and what PTQ cannot hold on real weights (all-MiniLM-L6-v2: cosine
# 0.85); meant for quantization.mode: qat (benchmarks/qat_encoders.py).
FULL_TRANSFORMER_PLACEMENT = Placement(name="transformer-full", ops=frozenset(
    {"MatMul", "Gemm", "Add", "Mul", "Div", "Sub", "Pow", "Sqrt", "Softmax", "LayerNormalization", "Erf", "Tanh"}))
# TensorRT on transformer towers: the Linear layers only (weight MatMuls/Gemms), symmetric int8 activations, float
# biases. Residual Adds, LayerNorm, Softmax, GELU and attention's activation x activation MatMuls stay float: Q/DQ
# on ViT residual Adds is what collapsed accuracy under Model Optimizer's default placement on Orin.
TENSORRT_TRANSFORMER_PLACEMENT = Placement(name="tensorrt-transformer", ops=frozenset({"MatMul", "Gemm"}), activation_dtype="int8",
                                           float_bias=True, weighted_only=frozenset({"MatMul", "Gemm"}))


def tensorrt_placement(kind: str) -> Placement | None:
    """TensorRT's placement for a graph kind (``cnn``, ``transformer``); None for decoders (not TensorRT graphs here)."""
    return {"cnn": TENSORRT_PLACEMENT, "transformer": TENSORRT_TRANSFORMER_PLACEMENT}.get(kind)


def matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def quantized_nodes(model: onnx.ModelProto, placement: Placement, float_nodes: list[str], float_ops: list[str]) -> list[onnx.NodeProto]:
    """Nodes that run in INT8: the placement's op types minus float-kept nodes and op types."""
    constants = GraphIndex(model).initializers if placement.weighted_only else {}
    return [
        n
        for n in model.graph.node
        if n.op_type in placement.ops and n.op_type not in float_ops and not matches(n.name, float_nodes)
        and (n.op_type not in placement.weighted_only or (len(n.input) > 1 and n.input[1] in constants))
    ]


def tensors_to_quantize(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> list[str]:
    """Every non-constant input of a quantized node (these get a Q/DQ pair)."""
    index = GraphIndex(model)
    seen: dict[str, None] = {}
    for node in nodes:
        for name in node.input:
            if name and not index.is_constant(name):
                seen.setdefault(name)
    return list(seen)


def build_spec(
    model: onnx.ModelProto,
    placement: Placement,
    ranges: dict[str, Range],
    float_nodes: list[str],
    float_ops: list[str],
    per_channel: bool = True,
) -> QuantSpec:
    """Turn calibrated ranges into a ``QuantSpec`` under ``placement``'s rules."""
    index = GraphIndex(model)
    nodes = quantized_nodes(model, placement, float_nodes, float_ops)
    spec = QuantSpec(float_nodes=[n.name for n in model.graph.node if matches(n.name, float_nodes) or n.op_type in float_ops])
    for name in tensors_to_quantize(model, nodes):
        producer = index.producer.get(name)
        rng = placement.fixed_ranges.get(producer.op_type) if producer is not None else None
        spec.activations[name] = QParams.from_range(rng or ranges[name], placement.activation_dtype)
    for node in nodes:  # pools/resizes pass values through: same parameters in and out
        if node.op_type in placement.shared_io and node.output[0] in spec.activations and node.input[0] in spec.activations:
            spec.activations[node.output[0]] = spec.activations[node.input[0]]
        if node.op_type in WEIGHT_OPS and len(node.input) > 1 and index.is_constant(node.input[1]):
            spec.weights[node.input[1]] = weight_axis(node, len(index.initializers[node.input[1]].dims)) if per_channel else None
    return spec
