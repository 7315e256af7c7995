"""The deployed Q/DQ ONNX graph as a trainable PyTorch module.

QAT trains the very graph that ships: every QuantizeLinear/DequantizeLinear of the Q/DQ model becomes a fake-quant
with a straight-through rounding, so the simulation cannot drift from the deployed placement. Activation scales are
parameters (LSQ-style, optional); int8 weights become float master weights re-quantized per channel on every step
exactly as ``edgekit.quantization.qdq.quantize_weight`` does; int32 biases follow their input and weight scales.
``export`` writes the trained numbers back into a copy of the same graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from edgekit.errors import EdgekitError

_QRANGE = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}
SUPPORTED = ("QuantizeLinear", "DequantizeLinear", "Conv", "Sigmoid", "Relu", "Mul", "Add", "Sub", "Div", "Concat",
             "Slice", "Reshape", "Transpose", "MaxPool", "Resize", "Identity", "Pow")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward (as ONNX QuantizeLinear), identity backward."""
    return x + (torch.round(x) - x).detach()


@dataclass(frozen=True)
class WeightQ:
    """An int8 weight initializer with its Conv: the float master weight is trained, the int8 form derived."""

    node: str
    quantized: str
    scale: str
    axis: int | None
    qmax: int = 127  # 63 where the graph holds 7-bit weights (reduce_range)


@dataclass(frozen=True)
class BiasQ:
    """An int32 bias whose scale is its Conv's input scale times the weight scale (as ``insert_qdq`` writes it)."""

    quantized: str
    scale: str
    input_scale: str
    weight: WeightQ


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _key(name: str) -> str:
    return name.replace(".", "_").replace("/", "_")


def dequantize(node: onnx.NodeProto, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The float value a DequantizeLinear of a constant computes: ``(q - zero_point) * scale``, per axis if per channel."""
    q = arrays[node.input[0]].astype(np.float64)
    scale = arrays[node.input[1]].astype(np.float64)
    zp = arrays[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else 0.0
    if scale.ndim:
        shape = [1] * q.ndim
        shape[_attrs(node).get("axis", 1)] = -1
        scale, zp = scale.reshape(shape), np.reshape(zp, shape) if np.ndim(zp) else zp
    return ((q - zp) * scale).astype(np.float32)


class QdqGraph(torch.nn.Module):
    """Runs a Q/DQ ONNX model in PyTorch with fake-quant at its Q/DQ nodes; ``learn_scales`` trains activation scales."""

    def __init__(self, model: onnx.ModelProto, learn_scales: bool = True) -> None:
        super().__init__()
        unsupported = sorted({n.op_type for n in model.graph.node} - set(SUPPORTED))
        if unsupported:
            raise EdgekitError(f"QAT runs these ONNX ops: {', '.join(SUPPORTED)}; this graph also has {', '.join(unsupported)}")
        self.model = model
        self.nodes = list(model.graph.node)
        self.inputs = [i.name for i in model.graph.input]
        self.outputs = [o.name for o in model.graph.output]
        arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.arrays = arrays
        producers = {o: n for n in self.nodes for o in n.output}
        self.weights: dict[str, WeightQ] = {}  # DQ output -> weight
        self.biases: dict[str, BiasQ] = {}
        self.activation_scales: list[str] = []
        self.params = torch.nn.ParameterDict()
        self.consts: dict[str, torch.Tensor] = {}
        for node in self.nodes:
            if node.op_type != "Conv":
                continue
            w_dq = producers.get(node.input[1])
            if w_dq is None or w_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in arrays:
                continue
            axis = _attrs(w_dq).get("axis", 1) if arrays[w_dq.input[1]].ndim else None
            qmax = 63 if int(np.abs(arrays[w_dq.input[0]].astype(np.int32)).max()) <= 63 else 127  # as PTQ wrote them
            wq = WeightQ(node.name, w_dq.input[0], w_dq.input[1], axis, qmax)
            self.weights[w_dq.output[0]] = wq
            self.params[_key(wq.quantized)] = torch.nn.Parameter(torch.from_numpy(dequantize(w_dq, arrays)))
            b_dq = producers.get(node.input[2]) if len(node.input) > 2 else None
            x_dq = producers.get(node.input[0])
            if b_dq is not None and b_dq.op_type == "DequantizeLinear" and x_dq is not None and x_dq.op_type == "DequantizeLinear":
                bq = BiasQ(b_dq.input[0], b_dq.input[1], x_dq.input[1], wq)
                self.biases[b_dq.output[0]] = bq
                self.params[_key(bq.quantized)] = torch.nn.Parameter(torch.from_numpy(dequantize(b_dq, arrays)))
        for node in self.nodes:
            if node.op_type == "QuantizeLinear" and node.input[1] not in self.activation_scales:
                self.activation_scales.append(node.input[1])
                scale = torch.tensor(arrays[node.input[1]].astype(np.float32))
                self.params[_key(node.input[1])] = torch.nn.Parameter(scale, requires_grad=learn_scales)
        for name, value in arrays.items():
            if value.dtype.kind == "f" and _key(name) not in self.params:
                self.consts[name] = torch.from_numpy(value.copy())


    # ---- quantized numbers derived from the trained parameters (used by forward and by export) ----
    def weight_scale(self, wq: WeightQ) -> torch.Tensor:
        w = self.params[_key(wq.quantized)]
        if wq.axis is None:
            bound = w.detach().abs().max()
        else:
            dims = tuple(i for i in range(w.ndim) if i != wq.axis)
            bound = w.detach().abs().amax(dim=dims)
        return (bound.double().clamp_min(1e-12) / float(wq.qmax)).float()

    def fake_weight(self, wq: WeightQ) -> torch.Tensor:
        w = self.params[_key(wq.quantized)]
        scale = self.weight_scale(wq)
        shape = [1] * w.ndim
        if wq.axis is not None:
            shape[wq.axis] = -1
        s = scale.reshape(shape)
        return torch.clamp(round_ste(w / s), -wq.qmax, wq.qmax) * s

    def bias_scale(self, bq: BiasQ) -> torch.Tensor:
        s_in = self.params[_key(bq.input_scale)].detach().double()
        return (s_in * self.weight_scale(bq.weight).double()).float()

    def fake_bias(self, bq: BiasQ) -> torch.Tensor:
        b = self.params[_key(bq.quantized)]
        s = self.bias_scale(bq)
        return round_ste(b / s) * s

    def _value(self, name: str, env: dict[str, torch.Tensor]) -> torch.Tensor:
        if name in env:
            return env[name]
        if _key(name) in self.params:
            return self.params[_key(name)]
        if name in self.consts:
            return self.consts[name]
        return torch.from_numpy(np.asarray(self.arrays[name]).copy())

    def _ints(self, name: str) -> list[int]:
        return [int(v) for v in np.asarray(self.arrays[name]).reshape(-1)]

    def forward(self, *feeds: torch.Tensor) -> list[torch.Tensor]:
        env: dict[str, torch.Tensor] = dict(zip(self.inputs, feeds, strict=True))
        for node in self.nodes:
            out = self._run(node, env)
            env[node.output[0]] = out
        return [env[o] for o in self.outputs]

    def _run(self, node: onnx.NodeProto, env: dict[str, torch.Tensor]) -> torch.Tensor:
        op, a = node.op_type, _attrs(node)
        out = node.output[0]
        if op == "DequantizeLinear" and out in self.weights:
            return self.fake_weight(self.weights[out])
        if op == "DequantizeLinear" and out in self.biases:
            return self.fake_bias(self.biases[out])
        x = self._value(node.input[0], env) if node.input and node.input[0] else None
        if op == "QuantizeLinear":
            scale = self._value(node.input[1], env)
            zp_arr = self.arrays[node.input[2]]
            low, high = _QRANGE[onnx.helper.np_dtype_to_tensor_dtype(zp_arr.dtype)]
            return torch.clamp(round_ste(x / scale) + float(zp_arr), low, high)
        if op == "DequantizeLinear":
            scale = self._value(node.input[1], env)
            zp = float(self.arrays[node.input[2]]) if len(node.input) > 2 else 0.0
            return (x - zp) * scale
        if op == "Conv":
            w = self._value(node.input[1], env)
            b = self._value(node.input[2], env) if len(node.input) > 2 and node.input[2] else None
            pads = a.get("pads", [0] * 4)
            if pads[:2] != pads[2:]:
                x, pads = F.pad(x, (pads[1], pads[3], pads[0], pads[2])), [0, 0, 0, 0]
            return F.conv2d(x, w, b, a.get("strides", [1, 1]), pads[:2], a.get("dilations", [1, 1]), a.get("group", 1))
        if op in ("Mul", "Add", "Sub", "Div", "Pow"):
            y = self._value(node.input[1], env)
            return {"Mul": torch.mul, "Add": torch.add, "Sub": torch.sub, "Div": torch.div, "Pow": torch.pow}[op](x, y)
        if op == "Sigmoid":
            return torch.sigmoid(x)
        if op == "Relu":
            return torch.relu(x)
        if op == "Identity":
            return x
        if op == "Concat":
            return torch.cat([self._value(i, env) for i in node.input], dim=a["axis"])
        if op == "Reshape":
            shape = self._ints(node.input[1])
            return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])
        if op == "Transpose":
            return x.permute(a["perm"])
        if op == "Slice":
            starts, ends = self._ints(node.input[1]), self._ints(node.input[2])
            axes = self._ints(node.input[3]) if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
            steps = self._ints(node.input[4]) if len(node.input) > 4 and node.input[4] else [1] * len(starts)
            index = [slice(None)] * x.ndim
            for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
                if st < 1:
                    raise EdgekitError(f"QAT runs Slice with positive steps only; node {node.name} has step {st}")
                dim = x.shape[ax]
                index[ax] = slice(min(s, dim), min(e, dim), st)
            return x[tuple(index)]
        if op == "MaxPool":
            pads = a.get("pads", [0] * 4)
            return F.max_pool2d(x, a["kernel_shape"], a.get("strides", [1, 1]), pads[:2], a.get("dilations", [1, 1]), bool(a.get("ceil_mode", 0)))
        if op == "Resize":
            scales = np.asarray(self.arrays[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
            if a.get("mode", b"nearest") != b"nearest" or a.get("coordinate_transformation_mode") != b"asymmetric" or scales is None:
                raise EdgekitError(f"QAT runs Resize as nearest/asymmetric with scales only; node {node.name} is not")
            return F.interpolate(x, scale_factor=[float(s) for s in scales[2:]], mode="nearest")
        raise EdgekitError(f"QAT cannot run {op} (node {node.name})")

    def export(self) -> onnx.ModelProto:
        """A copy of the Q/DQ model with the trained weights, biases and activation scales written in."""
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        values: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for wq in self.weights.values():
                scale = self.weight_scale(wq)
                w = self.params[_key(wq.quantized)].double()
                shape = [1] * w.ndim
                if wq.axis is not None:
                    shape[wq.axis] = -1
                q = torch.clamp(torch.round(w / scale.double().reshape(shape)), -wq.qmax, wq.qmax)
                values[wq.quantized] = q.numpy().astype(np.int8)
                values[wq.scale] = scale.numpy().astype(np.float32).reshape(self.arrays[wq.scale].shape)
            for name in self.activation_scales:
                values[name] = self.params[_key(name)].detach().clamp_min(1e-8).numpy().astype(np.float32).reshape(self.arrays[name].shape)
            for bq in self.biases.values():
                s = self.bias_scale(bq)
                # the input scale is the trained one now, as in forward
                b = self.params[_key(bq.quantized)].double()
                q = torch.clamp(torch.round(b / s.double()), -(2**31), 2**31 - 1)
                values[bq.quantized] = q.numpy().astype(np.int32)
                values[bq.scale] = np.broadcast_to(s.numpy().astype(np.float32), q.shape).copy()
        for init in out.graph.initializer:
            if init.name in values:
                init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))
        return out
