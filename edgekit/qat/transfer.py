"""QAT's numbers for a backend that places its own Q/DQ (TensorRT: symmetric int8, its own placement) or converts
from PyTorch (LiteRT).

QAT trains ONNX Runtime's Q/DQ graph. TensorRT cannot run that graph as it is (asymmetric uint8 activations, its
own placement), but it can be given what training learned: the FP32 model with the trained weights and biases
(dequantized exactly as ONNX Runtime runs them), and the activation range each trained scale encodes. TensorRT's
placement then quantizes from those as it does from PTQ's, so ``tensorrt:int8`` ships the trained weights; tensors
only TensorRT quantizes keep their calibrated ranges. LiteRT converts the family's PyTorch module, not the ONNX file:
:func:`trained_module` writes the same trained values into a copy of that module (each parameter found by its value
in the FP32 ONNX graph it was exported to), and the LiteRT build matches the trained ranges onto its tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edgekit.qat.graph import dequantize
from edgekit.quantization.spec import Range

_QRANGE = {TensorProto.UINT8: (0, 255), TensorProto.INT8: (-127, 127)}  # int8: TensorRT's symmetric range


def trained_float_model(fp32: onnx.ModelProto, trained: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``fp32`` with every Conv weight and bias that ``trained`` dequantizes from int8/int32 replaced by that value;
    returns the model and how many Convs it changed. Convs match by node name (the Q/DQ graph keeps them)."""
    arrays = {i.name: numpy_helper.to_array(i) for i in trained.graph.initializer}
    producer = {o: n for n in trained.graph.node for o in n.output}
    values: dict[str, np.ndarray] = {}
    by_name = {n.name: n for n in fp32.graph.node if n.op_type == "Conv" and n.name}
    for node in trained.graph.node:
        target = by_name.get(node.name)
        if node.op_type != "Conv" or target is None:
            continue
        for slot in (1, 2):
            dq = producer.get(node.input[slot]) if len(node.input) > slot and node.input[slot] else None
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in arrays and len(target.input) > slot:
                values[target.input[slot]] = dequantize(dq, arrays)
            elif len(node.input) > slot and node.input[slot] in arrays and len(target.input) > slot:
                values[target.input[slot]] = arrays[node.input[slot]]  # a float bias: training may have moved it
    out = onnx.ModelProto()
    out.CopyFrom(fp32)
    changed = set()
    for init in out.graph.initializer:
        if init.name in values:
            value = values[init.name].astype(numpy_helper.to_array(init).dtype).reshape(tuple(init.dims))
            init.CopyFrom(numpy_helper.from_array(value, init.name))
            changed.add(init.name)
    convs = sum(any(i in changed for i in n.input[1:]) for n in out.graph.node if n.op_type == "Conv")
    return out, convs


def trained_ranges(trained: onnx.ModelProto, ranges: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """``ranges`` with the range each trained activation QuantizeLinear encodes, ``(qmin - zp) s .. (qmax - zp) s``,
    in place of the calibrated one (tensors ``trained`` does not quantize keep theirs); returns them and how many
    were replaced."""
    arrays = {i.name: numpy_helper.to_array(i) for i in trained.graph.initializer}
    out, replaced = dict(ranges), 0
    for node in trained.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in arrays or node.input[1] not in arrays:
            continue
        scale = float(arrays[node.input[1]].reshape(-1)[0])
        zp_array = arrays.get(node.input[2]) if len(node.input) > 2 else None
        zp = int(zp_array.reshape(-1)[0]) if zp_array is not None else 0
        dtype = TensorProto.UINT8 if zp_array is None or zp_array.dtype == np.uint8 else TensorProto.INT8
        qmin, qmax = _QRANGE[dtype]
        out[node.input[0]] = Range(float((qmin - zp) * scale), float((qmax - zp) * scale))
        replaced += 1
    return out, replaced


def trained_module(module: Any, fp32: onnx.ModelProto, trained_fp32: onnx.ModelProto) -> tuple[Any, int, int]:
    """A copy of the PyTorch ``module`` that ``fp32`` was exported from, with every parameter whose value is an
    initializer of ``fp32`` that ``trained_fp32`` (:func:`trained_float_model`) changed set to the trained value; returns
    it, how many parameters it set and how many initializers training changed. Matching is by exact value and shape, since export and passes rename tensors;
    a value held by two initializers that trained differently is ambiguous and left as it is."""
    import copy
    import hashlib

    import torch

    def key(array: np.ndarray) -> tuple:
        array = np.ascontiguousarray(array, dtype=np.float32)
        return array.shape, hashlib.sha256(array.tobytes()).hexdigest()

    after = {i.name: numpy_helper.to_array(i) for i in trained_fp32.graph.initializer}
    changed: dict[tuple, np.ndarray | None] = {}
    for init in fp32.graph.initializer:
        before = numpy_helper.to_array(init)
        value = after.get(init.name)
        if before.dtype.kind != "f" or value is None or np.array_equal(before, value):
            continue
        k = key(before)
        changed[k] = None if k in changed and not np.array_equal(changed[k], value) else value
    out = copy.deepcopy(module)
    count = 0
    with torch.no_grad():
        for tensor in [*out.parameters(), *out.buffers()]:
            if not tensor.is_floating_point():
                continue
            value = changed.get(key(tensor.detach().cpu().numpy()))
            if value is not None:
                tensor.copy_(torch.from_numpy(value.astype(np.float32)).to(tensor.dtype))
                count += 1
    return out, count, len(changed)
