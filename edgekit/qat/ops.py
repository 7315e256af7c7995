"""PyTorch forms of the ONNX operators QAT runs outside the Q/DQ nodes themselves (opset 13-17 semantics).

Shape arithmetic (``Shape``, ``Gather`` of dims, ``Range``, ``Expand``...) runs on int64 tensors each step, so a
graph exported with dynamic batch and sequence (a BERT text tower) trains on sentences of any length. Each function
takes the node's resolved inputs (``None`` for an omitted optional one) and its attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from edgekit.errors import EdgekitError

Inputs = Sequence[torch.Tensor | None]
Op = Callable[[Inputs, dict], torch.Tensor]

_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64, onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool,
}


def ints(value: torch.Tensor | None) -> list[int]:
    return [] if value is None else [int(v) for v in value.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _div(x: Inputs, a: dict) -> torch.Tensor:
    if x[0].dtype.is_floating_point or x[1].dtype.is_floating_point:
        return torch.div(x[0], x[1])
    return torch.div(x[0], x[1], rounding_mode="trunc")  # ONNX integer Div truncates


def _constant(x: Inputs, a: dict) -> torch.Tensor:
    if "value" in a:
        return torch.from_numpy(numpy_helper.to_array(a["value"]).copy())
    for key, dtype in (("value_float", torch.float32), ("value_int", torch.int64), ("value_floats", torch.float32), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    raise EdgekitError("QAT runs Constant nodes holding a tensor, float(s) or int(s) only")


def _constant_of_shape(x: Inputs, a: dict) -> torch.Tensor:
    value = torch.from_numpy(numpy_helper.to_array(a["value"]).copy()) if "value" in a else torch.zeros(1)
    return value.reshape(()).expand(ints(x[0])).clone()


def _gather(x: Inputs, a: dict) -> torch.Tensor:
    data, idx = x[0], x[1].long()
    axis = _axis(a.get("axis", 0), data.ndim)
    idx = torch.where(idx < 0, idx + data.shape[axis], idx)
    out = data.index_select(axis, idx.reshape(-1))
    return out.reshape(list(data.shape[:axis]) + list(idx.shape) + list(data.shape[axis + 1 :]))


def _unsqueeze(x: Inputs, a: dict) -> torch.Tensor:
    axes = ints(x[1]) if len(x) > 1 and x[1] is not None else a["axes"]
    out, rank = x[0], x[0].ndim + len(axes)
    for ax in sorted(_axis(ax, rank) for ax in axes):
        out = out.unsqueeze(ax)
    return out


def _squeeze(x: Inputs, a: dict) -> torch.Tensor:
    axes = ints(x[1]) if len(x) > 1 and x[1] is not None else a.get("axes")
    if not axes:
        return x[0].squeeze()
    return x[0].squeeze(tuple(_axis(ax, x[0].ndim) for ax in axes))


def _reshape(x: Inputs, a: dict) -> torch.Tensor:
    shape = ints(x[1])
    return x[0].reshape([x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)])


def _slice(x: Inputs, a: dict) -> torch.Tensor:
    data, starts, ends = x[0], ints(x[1]), ints(x[2])
    axes = ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        if st < 1:
            raise EdgekitError(f"QAT runs Slice with positive steps only; this one has step {st}")
        index[_axis(ax, data.ndim)] = slice(s, e, st)  # Python clamps out-of-range starts and ends as ONNX does
    return data[tuple(index)]


def _reduce(fn: Callable) -> Op:
    def run(x: Inputs, a: dict) -> torch.Tensor:
        axes = ints(x[1]) if len(x) > 1 and x[1] is not None else a.get("axes")
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x[0]
            axes = list(range(x[0].ndim))
        return fn(x[0], [_axis(ax, x[0].ndim) for ax in axes], keep)

    return run


def _layer_norm(x: Inputs, a: dict) -> torch.Tensor:
    axis = _axis(a.get("axis", -1), x[0].ndim)
    return F.layer_norm(x[0], list(x[0].shape[axis:]), x[1], x[2] if len(x) > 2 else None, a.get("epsilon", 1e-5))


def _gemm(x: Inputs, a: dict) -> torch.Tensor:
    left = x[0].t() if a.get("transA", 0) else x[0]
    right = x[1].t() if a.get("transB", 0) else x[1]
    out = a.get("alpha", 1.0) * (left @ right)
    return out + a.get("beta", 1.0) * x[2] if len(x) > 2 and x[2] is not None else out


def _conv(x: Inputs, a: dict) -> torch.Tensor:
    data, pads = x[0], a.get("pads", [0] * 4)
    if pads[:2] != pads[2:]:
        data, pads = F.pad(data, (pads[1], pads[3], pads[0], pads[2])), [0, 0, 0, 0]
    bias = x[2] if len(x) > 2 else None
    return F.conv2d(data, x[1], bias, a.get("strides", [1, 1]), pads[:2], a.get("dilations", [1, 1]), a.get("group", 1))


def _resize(x: Inputs, a: dict) -> torch.Tensor:
    scales = x[2] if len(x) > 2 else None
    if a.get("mode", b"nearest") != b"nearest" or a.get("coordinate_transformation_mode") != b"asymmetric" or scales is None:
        raise EdgekitError("QAT runs Resize as nearest/asymmetric with scales only")
    return F.interpolate(x[0], scale_factor=[float(s) for s in scales.tolist()[2:]], mode="nearest")


def _max_pool(x: Inputs, a: dict) -> torch.Tensor:
    pads = a.get("pads", [0] * 4)
    return F.max_pool2d(x[0], a["kernel_shape"], a.get("strides", [1, 1]), pads[:2], a.get("dilations", [1, 1]), bool(a.get("ceil_mode", 0)))


def _argmax(x: Inputs, a: dict) -> torch.Tensor:
    if a.get("select_last_index", 0):
        raise EdgekitError("QAT runs ArgMax with select_last_index 0 only")
    return torch.argmax(x[0], dim=a.get("axis", 0), keepdim=bool(a.get("keepdims", 1)))


def _clip(x: Inputs, a: dict) -> torch.Tensor:
    low = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    high = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    return torch.clamp(x[0], low, high)


def _flatten(x: Inputs, a: dict) -> torch.Tensor:
    axis = _axis(a.get("axis", 1), x[0].ndim)
    return x[0].reshape(int(np.prod(x[0].shape[:axis], dtype=np.int64)), -1)


OPS: dict[str, Op] = {
    "Conv": _conv,
    "MatMul": lambda x, a: torch.matmul(x[0], x[1]),
    "Gemm": _gemm,
    "Add": lambda x, a: x[0] + x[1],
    "Sub": lambda x, a: x[0] - x[1],
    "Mul": lambda x, a: x[0] * x[1],
    "Div": _div,
    "Pow": lambda x, a: torch.pow(x[0], x[1]),
    "Sqrt": lambda x, a: torch.sqrt(x[0]),
    "Erf": lambda x, a: torch.erf(x[0]),
    "Tanh": lambda x, a: torch.tanh(x[0]),
    "Sigmoid": lambda x, a: torch.sigmoid(x[0]),
    "Relu": lambda x, a: torch.relu(x[0]),
    "Gelu": lambda x, a: F.gelu(x[0], approximate="tanh" if a.get("approximate", b"none") == b"tanh" else "none"),
    "Softmax": lambda x, a: torch.softmax(x[0], dim=a.get("axis", -1)),
    "LayerNormalization": _layer_norm,
    "Identity": lambda x, a: x[0],
    "Concat": lambda x, a: torch.cat(list(x), dim=a["axis"]),
    "Reshape": _reshape,
    "Transpose": lambda x, a: x[0].permute(a["perm"]) if "perm" in a else x[0].permute(*reversed(range(x[0].ndim))),
    "Slice": _slice,
    "MaxPool": _max_pool,
    "Resize": _resize,
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Shape": lambda x, a: torch.tensor(list(x[0].shape), dtype=torch.int64)[a.get("start", 0) : a.get("end")],
    "Gather": _gather,
    "GatherElements": lambda x, a: torch.gather(x[0], _axis(a.get("axis", 0), x[0].ndim), x[1].long()),
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Flatten": _flatten,
    "Cast": lambda x, a: x[0].to(_DTYPES[a["to"]]),
    "Where": lambda x, a: torch.where(x[0].bool(), x[1], x[2]),
    "Expand": lambda x, a: x[0].expand(torch.broadcast_shapes(tuple(x[0].shape), tuple(ints(x[1])))),
    "Equal": lambda x, a: torch.eq(x[0], x[1]),
    "GreaterOrEqual": lambda x, a: torch.ge(x[0], x[1]),
    "Less": lambda x, a: torch.lt(x[0], x[1]),
    "LessOrEqual": lambda x, a: torch.le(x[0], x[1]),
    "ArgMax": _argmax,
    "Greater": lambda x, a: torch.gt(x[0], x[1]),
    "And": lambda x, a: torch.logical_and(x[0], x[1]),
    "Not": lambda x, a: torch.logical_not(x[0]),
    "Range": lambda x, a: torch.arange(x[0].item(), x[1].item(), x[2].item(), dtype=x[0].dtype),
    "ReduceSum": _reduce(lambda t, axes, keep: t.sum(dim=axes, keepdim=keep)),
    "ReduceMean": _reduce(lambda t, axes, keep: t.mean(dim=axes, keepdim=keep)),
    "ReduceMax": _reduce(lambda t, axes, keep: t.amax(dim=axes, keepdim=keep)),
    "ReduceL2": _reduce(lambda t, axes, keep: t.square().sum(dim=axes, keepdim=keep).sqrt()),
    "Clip": _clip,
}
