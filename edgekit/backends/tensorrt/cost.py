"""TensorRT latency priced without a GPU: a documented roofline cost model of the Q/DQ graph TensorRT fuses.

TensorRT cannot run on the machines that build most recipes, so a ``tensorrt:int8`` target's own budget search
(``quantization.search``) prices its float groups with this model instead of a measurement, and the report says so.
The model, per compute layer (Conv, ConvTranspose, MatMul, Gemm; TensorRT fuses the bias, the pointwise activation
and a residual Add into the layer's kernel, so those cost nothing extra)::

    time = max(2 * padded MACs / peak ops of its precision, bytes moved in its precision / memory bandwidth)

* padded MACs: input and output channels rounded up to the Tensor Core alignment of 16 bytes, i.e. 8 channels in
  FP16 and 16 in INT8 (NVIDIA Deep Learning Performance Guide, "Tensor Core requirements"); a depthwise conv is not
  padded;
* bytes: input activation + weights + output activation, 1 byte per element in INT8 and 2 in FP16;
* a float group, and the placement's float scope (the detector's decode), run in FP16 (the TensorRT target's float
  precision), every other quantized layer in INT8; a node the placement neither quantizes nor keeps float (SiLU's
  Sigmoid and Mul, which TensorRT fuses into the conv before them) runs in the precision of its first producer;
* where an INT8 node feeds an FP16 one, or the reverse, TensorRT inserts a reformat: 3 bytes per element of the
  crossing tensor (read one precision, write the other), memory bound. Pooling, Concat, Resize and the decode's
  arithmetic are not priced: they are the same in every candidate but for their edges' reformats.

Peaks are the dense datasheet figures of :data:`DEVICES` (sparse figures halved) and one efficiency applies to every
layer, so the model *ranks* candidates (what the search needs) and predicts no absolute latency: the search's
``latency_ms`` for TensorRT are model milliseconds, and only a built engine measures the real ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
ALIGN = {"int8": 16, "fp16": 8}  # channels per 16-byte Tensor Core alignment
BYTES = {"int8": 1, "fp16": 2}
REFORMAT_BYTES = 3  # per element of a tensor crossing an int8 <-> fp16 boundary


@dataclass(frozen=True)
class Device:
    """Dense Tensor Core peaks and memory bandwidth from NVIDIA's datasheets."""

    name: str
    int8_tops: float
    fp16_tflops: float
    bandwidth_gbs: float

    def peak(self, precision: str) -> float:
        """Operations per second (a MAC is two)."""
        return 1e12 * (self.int8_tops if precision == "int8" else self.fp16_tflops)


DEVICES = {
    "jetson-orin-nano-8gb": Device("Jetson Orin Nano 8GB", 20.0, 10.0, 68.0),  # 40 sparse INT8 TOPS
    "jetson-agx-orin-64gb": Device("Jetson AGX Orin 64GB (GPU)", 85.0, 42.5, 204.8),  # 170 sparse INT8 TOPS
    "t4": Device("Tesla T4", 130.0, 65.0, 320.0),
    "l4": Device("L4", 242.0, 121.0, 300.0),  # 485 sparse INT8 TOPS
}


@dataclass(frozen=True)
class _Layer:
    node: str
    macs: dict[str, float]  # precision -> padded MACs
    elements: int  # input + weight + output elements


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(d.dim_value for d in dims)
    return out


def _pad(channels: int, precision: str) -> int:
    step = ALIGN[precision]
    return int(math.ceil(channels / step) * step)


def _layer(node: onnx.NodeProto, weights: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> _Layer | None:
    w = next((weights[i] for i in node.input[1:2] if i in weights), None)
    x, y = shapes.get(node.input[0]), shapes.get(node.output[0])
    if w is None or x is None or y is None:
        return None
    elements = int(np.prod(x)) + int(w.size) + int(np.prod(y))
    if node.op_type in ("Conv", "ConvTranspose"):
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        spatial = int(np.prod(w.shape[2:]))
        out_ch, in_ch = (w.shape[0], w.shape[1]) if node.op_type == "Conv" else (w.shape[1] * group, w.shape[0] // group)
        positions = int(np.prod(y)) // y[1] if node.op_type == "Conv" else int(np.prod(x)) // x[1]
        depthwise = group > 1 and in_ch == 1
        macs = {p: float(positions * spatial * (in_ch if depthwise else _pad(in_ch, p)) * (out_ch if depthwise else _pad(out_ch, p)))
                for p in BYTES}
        return _Layer(node.name, macs, elements)
    transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    k, n = (w.shape[1], w.shape[0]) if transposed else (w.shape[-2], w.shape[-1])
    rows = int(np.prod(y)) // y[-1]
    return _Layer(node.name, {p: float(rows * _pad(k, p) * _pad(n, p)) for p in BYTES}, elements)


class TensorRTCostModel:
    """Model milliseconds of the TensorRT engine of ``model`` with some nodes FP16 and the rest INT8."""

    def __init__(self, model: onnx.ModelProto, device: str = "jetson-orin-nano-8gb") -> None:
        """``model``: the FP32 graph (static shapes) the Q/DQ placement is applied to."""
        if device not in DEVICES:
            raise ValueError(f"unknown TensorRT cost-model device {device!r}: use one of {', '.join(DEVICES)}")
        self.device = DEVICES[device]
        shapes = _shapes(model)
        weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.layers = [lay for n in model.graph.node if n.op_type in COMPUTE_OPS and (lay := _layer(n, weights, shapes)) is not None]
        produced = {o: n.name for n in model.graph.node for o in n.output}
        self.order = [n.name for n in model.graph.node]  # topological (ONNX requires it)
        self.first_producer = {n.name: next((produced[i] for i in n.input if i in produced), None) for n in model.graph.node}
        self.edges = sorted({(produced[i], n.name, int(np.prod(shapes[i]))) for n in model.graph.node for i in n.input
                             if i in produced and i in shapes})

    def layer_ms(self, layer: _Layer, precision: str) -> float:
        compute = 2.0 * layer.macs[precision] / self.device.peak(precision)
        memory = BYTES[precision] * layer.elements / (1e9 * self.device.bandwidth_gbs)
        return 1e3 * max(compute, memory)

    def precisions(self, int8_nodes: set[str], fp16_nodes: set[str]) -> dict[str, str]:
        """Every node's precision: ``int8_nodes`` INT8, ``fp16_nodes`` FP16, the others their first producer's
        (fused epilogues), FP16 where they read only graph inputs or constants."""
        out: dict[str, str] = {}
        for name in self.order:
            if name in int8_nodes:
                out[name] = "int8"
            elif name in fp16_nodes:
                out[name] = "fp16"
            else:
                out[name] = out.get(self.first_producer[name] or "", "fp16")
        return out

    def ms(self, int8_nodes: set[str], fp16_nodes: set[str]) -> float:
        """Model latency with ``int8_nodes`` in INT8, ``fp16_nodes`` in FP16 and the rest fused into their producer."""
        prec = self.precisions(int8_nodes, fp16_nodes)
        total = sum(self.layer_ms(lay, prec[lay.node]) for lay in self.layers)
        crossing = sum(e for src, dst, e in self.edges if prec[src] != prec[dst])
        return total + 1e3 * REFORMAT_BYTES * crossing / (1e9 * self.device.bandwidth_gbs)


def group_estimator(cost: TensorRTCostModel, quantized: Sequence[str], float_scope: Sequence[str], groups: Sequence) -> Callable[[Sequence[str]], float]:
    """``estimate(float group names) -> model ms``: the placement's ``quantized`` nodes INT8 except those groups',
    which join the ``float_scope`` nodes in FP16."""
    by_name = {g.name: set(g.nodes) for g in groups}
    base, scope = set(quantized), set(float_scope)

    def estimate(names: Sequence[str]) -> float:
        floated = set().union(*(by_name[n] for n in names)) if names else set()
        return round(cost.ms(base - floated, scope | floated), 5)

    return estimate
