"""QAT's numbers for a backend that places its own Q/DQ (TensorRT: symmetric int8, its own placement).

QAT trains ONNX Runtime's Q/DQ graph. TensorRT cannot run that graph as it is (asymmetric uint8 activations, its
own placement), but it can be given what training learned: the FP32 model with the trained weights and biases
(dequantized exactly as ONNX Runtime runs them), and the activation range each trained scale encodes. TensorRT's
placement then quantizes from those as it does from PTQ's, so ``tensorrt:int8`` ships the trained weights; tensors
only TensorRT quantizes keep their calibrated ranges.
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
