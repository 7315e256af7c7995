"""Empirical bias correction: remove the mean shift int8 adds to each quantized convolution's / MatMul's output.

Rounding weights and clipping activations moves the mean of a layer's output per channel (Nagel et al., "Data-Free
Quantization", 2019; NNCF's bias correction). On the calibration samples we measure, per output channel, the mean of
each quantized Conv/Gemm output caused by its own int8 weights and int8 input (on float inputs), and subtract it
from the layer's float bias. The corrected biases are then quantized as usual (int32 at ``input_scale x weight_scale``),
so the result is the same Q/DQ form every backend reads. Calibration samples only: label-free, evaluation never seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.quantization.graph import GraphIndex

CORRECTED_OPS = frozenset({"Conv", "Gemm", "MatMul"})


def correctable(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto]) -> dict[str, tuple[onnx.NodeProto, str]]:
    """Output tensor -> (node, bias initializer) of every quantized Conv/Gemm with a constant weight and bias."""
    index = GraphIndex(model)
    out = {}
    for node in nodes:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in index.initializers and index.is_constant(node.input[1]):
            out[node.output[0]] = (node, node.input[2])
    return out


def correct_biases(
    fp32: onnx.ModelProto,
    spec,
    nodes: Sequence[onnx.NodeProto],
    feeds: Sequence[Any],
    transform: Callable[[Any], dict],
    threads: int = 2,
    progress: Callable[[str, int], Iterator[int]] | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The FP32 model with each quantized Conv/Gemm's bias corrected for the mean shift its own int8 weights and int8
    input (``spec``'s parameters, clipping included) add, measured on ``feeds`` with FP32 inputs; and a record.

    Local, not chained: each layer's shift is measured on float inputs, so corrections do not compound (correcting
    every layer against the Q/DQ model's chained outputs at once over-corrects downstream layers and made YOLOv5n
    worse). For a linear layer ``E[W_q q(x)] - E[W x] = sum_k W_q E[q(x)] - sum_k W E[x]`` per output channel, with
    per-input-channel means (zero padding at borders is ignored: the same approximation enters both terms)."""
    import onnxruntime as ort

    from edgekit.quantization.calibration import observe_model
    from edgekit.quantization.qdq import quantize_weight

    steps = progress or (lambda _label, n: iter(range(n)))
    index = GraphIndex(fp32)
    targets = {}
    for out_name, (node, bias) in correctable(fp32, nodes).items():
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
        if node.input[0] in spec.activations and node.input[1] in spec.weights and groups == 1 and not transposed:
            targets[out_name] = (node, bias)
    if not targets:
        return fp32, {"layers": 0}
    inputs = sorted({node.input[0] for node, _ in targets.values()})
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(observe_model(fp32, inputs), options, providers=["CPUExecutionProvider"])
    mean_x: dict[str, np.ndarray] = {}
    mean_q: dict[str, np.ndarray] = {}
    for i in steps("bias correction", len(feeds)):
        for name, x in zip(inputs, session.run(inputs, transform(feeds[i]))):
            qp = spec.activations[name]
            lo, hi = (0, 255) if qp.dtype == "uint8" else (-128, 127)
            q = (np.clip(np.rint(x / qp.scale) + qp.zero_point, lo, hi) - qp.zero_point) * np.float32(qp.scale)
            axes = tuple(a for a in range(x.ndim) if a != 1) if x.ndim > 1 else ()
            mean_x[name] = mean_x.get(name, 0.0) + x.astype(np.float64).mean(axis=axes)
            mean_q[name] = mean_q.get(name, 0.0) + q.astype(np.float64).mean(axis=axes)
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    inits = {i.name: i for i in model.graph.initializer}
    shifts = []
    for node, bias in targets.values():
        w = numpy_helper.to_array(index.initializers[node.input[1]]).astype(np.float64)
        axis = spec.weights[node.input[1]]
        wq, scale = quantize_weight(w, axis, int(spec.settings.get("weight_qmax", 127)))
        shape = [1] * w.ndim
        if axis is not None:
            shape[axis] = -1
        wd = wq.astype(np.float64) * scale.astype(np.float64).reshape(shape)
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            w, wd = w.T, wd.T
        if node.op_type == "Conv":  # (C_out, C_in, k...) -> (C_out, C_in)
            w, wd = w.reshape(w.shape[0], w.shape[1], -1).sum(-1), wd.reshape(wd.shape[0], wd.shape[1], -1).sum(-1)
        else:  # Gemm B (K, N) -> (N, K)
            w, wd = w.T, wd.T
        mx, mq = mean_x[node.input[0]] / len(feeds), mean_q[node.input[0]] / len(feeds)
        shift = wd @ mq - w @ mx
        value = numpy_helper.to_array(inits[bias]).astype(np.float64)
        if value.shape != shift.shape:
            continue
        inits[bias].CopyFrom(numpy_helper.from_array((value - shift).astype(np.float32), bias))
        shifts.append(float(np.abs(shift).mean()))
    return model, {"layers": len(shifts), "samples": len(feeds), "mean_abs_shift": round(float(np.mean(shifts)), 6),
                   "max_abs_shift": round(float(max(shifts)), 6), "kind": "local (float inputs), per output channel"}
