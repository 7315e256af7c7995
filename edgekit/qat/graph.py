"""The deployed Q/DQ ONNX graph as a trainable PyTorch module.

QAT trains the very graph that ships: every QuantizeLinear/DequantizeLinear of the Q/DQ model becomes a fake-quant
with a straight-through rounding, so the simulation cannot drift from the deployed placement. Activation scales are
parameters (LSQ-style, optional); int8 weights become float master weights re-quantized per channel on every step
exactly as ``edgekit.quantization.qdq.quantize_weight`` does; int32 biases follow their input and weight scales.
``export`` writes the trained numbers back into a copy of the same graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from edgekit.errors import EdgekitError
from edgekit.qat.ops import OPS

_QRANGE = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}
SUPPORTED = ("QuantizeLinear", "DequantizeLinear", *OPS)
WEIGHTED = ("Conv", "MatMul", "Gemm")  # nodes whose input 1 may be an int8 weight initializer


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward (as ONNX QuantizeLinear), identity backward."""
    return x + (torch.round(x) - x).detach()


@dataclass(frozen=True)
class WeightQ:
    """An int8 weight initializer with its Conv/MatMul/Gemm: the float master weight is trained, the int8 form derived."""

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

    def __init__(self, model: onnx.ModelProto, learn_scales: bool = True, taps: Sequence[str] = ()) -> None:
        super().__init__()
        unsupported = sorted({n.op_type for n in model.graph.node} - set(SUPPORTED))
        if unsupported:
            raise EdgekitError(f"QAT cannot run these ONNX ops of the graph yet: {', '.join(unsupported)}",
                               fix="use quantization.mode: ptq for this model")
        self.model = model
        self.nodes = list(model.graph.node)
        self.inputs = [i.name for i in model.graph.input]
        self.outputs = [o.name for o in model.graph.output]
        self.taps = list(taps)  # intermediate tensors ``forward`` returns after the outputs (feature distillation)
        arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.arrays = arrays
        producers = {o: n for n in self.nodes for o in n.output}
        self.weights: dict[str, WeightQ] = {}  # DQ output -> weight
        self.biases: dict[str, BiasQ] = {}
        self.activation_scales: list[str] = []
        self.params = torch.nn.ParameterDict()
        self.consts: dict[str, torch.Tensor] = {}
        for node in self.nodes:
            if node.op_type not in WEIGHTED or len(node.input) < 2:
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
        self.float_params = self._float_affine(producers, arrays)
        for name in self.float_params:
            self.params[_key(name)] = torch.nn.Parameter(torch.from_numpy(arrays[name].copy()))
        for node in self.nodes:
            if node.op_type == "QuantizeLinear" and node.input[1] not in self.activation_scales:
                self.activation_scales.append(node.input[1])
                scale = torch.tensor(arrays[node.input[1]].astype(np.float32))
                self.params[_key(node.input[1])] = torch.nn.Parameter(scale, requires_grad=learn_scales)
        for name, value in arrays.items():
            if _key(name) not in self.params:
                self.consts[name] = torch.from_numpy(value.copy())

    def _float_affine(self, producers: dict[str, onnx.NodeProto], arrays: dict[str, np.ndarray]) -> list[str]:
        """Float initializers trained beside the int8 weights: the bias Add after a quantized MatMul/Gemm (its
        output re-quantized in between) and the scale and bias of a quantized LayerNormalization. A transformer's
        biases and norms stay float in the deployed graph, and letting them move is most of what repairs it."""
        quantized = {wq.node for wq in self.weights.values()}

        def source(name: str) -> onnx.NodeProto | None:
            node = producers.get(name)
            while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                node = producers.get(node.input[0])
            return node

        out: list[str] = []
        for node in self.nodes:
            if node.op_type == "LayerNormalization" and getattr(producers.get(node.input[0]), "op_type", "") == "DequantizeLinear":
                out += [n for n in node.input[1:] if n in arrays and arrays[n].dtype.kind == "f"]
            elif node.op_type == "Add":
                consts = [n for n in node.input if n in arrays and arrays[n].dtype.kind == "f" and arrays[n].ndim == 1]
                others = [source(n) for n in node.input if n not in arrays]
                if len(consts) == 1 and len(others) == 1 and others[0] is not None and others[0].name in quantized:
                    out += consts
        return list(dict.fromkeys(out))

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
        return self.consts[name]

    def forward(self, *feeds: torch.Tensor) -> list[torch.Tensor]:
        env: dict[str, torch.Tensor] = dict(zip(self.inputs, feeds, strict=True))
        for node in self.nodes:
            env[node.output[0]] = self._run(node, env)
        return [env[o] for o in self.outputs + self.taps]

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
            zp = float(zp_arr)  # clamp before rounding: a masked -3.4e38 divides to -inf, which rounds to nan
            return round_ste(torch.clamp(x / scale, low - zp, high - zp)) + zp
        if op == "DequantizeLinear":
            scale = self._value(node.input[1], env)
            zp = float(self.arrays[node.input[2]]) if len(node.input) > 2 else 0.0
            return (x.float() - zp) * scale
        inputs = [self._value(i, env) if i else None for i in node.input]
        try:
            return OPS[op](inputs, a)
        except EdgekitError as exc:
            raise EdgekitError(f"{exc.args[0]} (node {node.name})") from None

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
            for name in self.float_params:
                values[name] = self.params[_key(name)].detach().numpy().astype(self.arrays[name].dtype)
        for init in out.graph.initializer:
            if init.name in values:
                init.CopyFrom(numpy_helper.from_array(values[init.name], init.name))
        return out
