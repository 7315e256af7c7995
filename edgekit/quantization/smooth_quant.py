"""SmoothQuant (Xiao et al., 2023) over an ONNX graph: move activation outliers into the weights.

For each LayerNormalization whose output feeds only weight MatMuls (attention q/k/v, MLP fc1), a per-channel
factor ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` divides the LayerNorm's scale and bias and multiplies row
``j`` of every consuming weight, so the graph computes the same function while the MatMul inputs have flatter
per-channel ranges, which per-tensor int8 activations represent better.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.quantization.calibration import observe_model
from edgekit.quantization.graph import GraphIndex

_PASSIVE = {"Shape"}  # consumers that read only the shape, not the values


def smoothable(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """LayerNorm output tensor -> the weight MatMuls it feeds (only LayerNorms feeding nothing else)."""
    index = GraphIndex(model)
    out = {}
    for node in model.graph.node:
        if node.op_type != "LayerNormalization" or len(node.input) < 3 or not all(index.is_constant(i) for i in node.input[1:3]):
            continue
        consumers = index.consumers.get(node.output[0], [])
        mats = [c for c in consumers if c.op_type == "MatMul" and c.input[0] == node.output[0] and index.is_constant(c.input[1])]
        if mats and all(c in mats or c.op_type in _PASSIVE for c in consumers):
            out[node.output[0]] = mats
    return out


def channel_absmax(model: onnx.ModelProto, tensors: list[str], samples: Sequence, preprocess: Callable, threads: int = 2, progress=None) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each tensor, over ``samples``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(observe_model(model, tensors), options, providers=["CPUExecutionProvider"])
    steps = progress or (lambda _label, n: iter(range(n)))
    peak: dict[str, np.ndarray] = {}
    for i in steps("smooth quant: channel ranges", len(samples)):
        for name, value in zip(tensors, session.run(tensors, preprocess(samples[i]))):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            peak[name] = np.maximum(peak[name], m) if name in peak else m
    return peak


def smooth_quant(
    model: onnx.ModelProto, samples: Sequence, preprocess: Callable, alpha: float = 0.5, threads: int = 2,
    progress: Callable[[str, int], Iterator[int]] | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A smoothed copy of ``model`` (same function in exact arithmetic) and the settings for the manifest."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    groups = smoothable(out)
    if not groups:
        return out, {"alpha": alpha, "smoothed_layernorms": 0}
    act = channel_absmax(out, list(groups), samples, preprocess, threads, progress)
    index = GraphIndex(out)
    producer = index.producer
    inits = {i.name: i for i in out.graph.initializer}

    def replace(node: onnx.NodeProto, slot: int, value: np.ndarray, suffix: str) -> None:
        name = f"{node.name}_{suffix}_smoothed"  # a private copy: exporters share identical initializers
        out.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        node.input[slot] = name

    for tensor, mats in groups.items():
        weights = [numpy_helper.to_array(inits[m.input[1]]).astype(np.float64) for m in mats]
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)  # per input channel (row)
        s = np.power(np.maximum(act[tensor], 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha)
        s = np.clip(s, 1e-5, None)
        ln = producer[tensor]
        replace(ln, 1, numpy_helper.to_array(inits[ln.input[1]]) / s, "scale")
        replace(ln, 2, numpy_helper.to_array(inits[ln.input[2]]) / s, "bias")
        for m, w in zip(mats, weights):
            replace(m, 1, w * s[:, None], "weight")
    used = {i for n in out.graph.node for i in n.input}
    keep = [i for i in out.graph.initializer if i.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out, {"alpha": alpha, "smoothed_layernorms": len(groups), "samples": len(samples)}
