"""TensorRT's accuracy where TensorRT cannot run: the graph edgekit hands to TensorRT, executed on the CPU.

- ``int8``: TensorRT's explicit quantization executes the Q/DQ graph as written (symmetric int8, zero-point 0,
  per-channel weights, the float scope). ONNX Runtime with graph optimizations off runs the same graph as written:
  QuantizeLinear rounds and saturates, DequantizeLinear rescales, and the convolutions run in fp32 on the
  dequantized values. No integer kernel is involved, so the CPU's own int8 arithmetic (the u8s8 saturation of x86
  CPUs without VNNI) cannot leak in. What differs from an engine is accumulation order and TensorRT's kernel
  fusions, which change results at fp32 rounding level, not at int8 rounding level.
- ``fp16``: every float tensor is rounded to fp16 where TensorRT would store it in fp16 (weights, the graph input,
  every layer output), and kept fp32 around the layers TensorRT keeps in fp32 in mixed precision (normalization
  statistics, Softmax, reductions and exponentials that overflow fp16). Arithmetic runs in fp32 between the roundings,
  as TensorRT's fp16 kernels accumulate in fp32.

The report calls these variants ``simulated``: accuracy measured, latency not, engine not built.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# ops whose inputs and outputs stay fp32 in the emulation: TensorRT keeps them in fp32 under mixed precision, or
# they overflow / lose range in fp16 (variance of LayerNorm, exp in Softmax, sums of squares)
FP32_OPS = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization", "Softmax", "LogSoftmax",
                      "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Pow", "Sqrt", "Exp",
                      "Log", "TopK", "NonMaxSuppression", "CumSum"})

INT8_HOW = ("accuracy simulated on CPU: ONNX Runtime runs the TensorRT Q/DQ graph as written (graph optimizations off, "
            "no integer kernels); latency not measured")
FP16_HOW = ("accuracy simulated on CPU: the FP32 graph with every tensor TensorRT stores in fp16 rounded to fp16 "
            f"({', '.join(sorted(FP32_OPS)[:4])}... kept fp32); latency not measured")


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name for v in values if v.type.tensor_type.elem_type == TensorProto.FLOAT}


def fp16_emulation(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with fp16 storage emulated: float weights rounded to fp16 (those of ``FP32_OPS`` kept), the graph
    input rounded, and every float output of a layer not in ``FP32_OPS`` rounded in place (its producer writes
    ``name__raw``, then Cast(fp16) -> Cast(fp32) writes ``name``), so every consumer and graph output reads the
    rounded value. Same inputs, outputs and dtypes as ``model``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    floats = _float_tensors(out)
    feeds_fp32 = {i for n in g.node if n.op_type in FP32_OPS for i in n.input}
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in feeds_fp32:
            fp16_max = float(np.finfo(np.float16).max)  # TensorRT clamps weights outside fp16's range (a mask's -3.4e38)
            rounded = np.clip(numpy_helper.to_array(init), -fp16_max, fp16_max).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    inits = {i.name for i in g.initializer}

    def pair(src: str, dst: str, tag: str) -> list[onnx.NodeProto]:
        return [helper.make_node("Cast", [src], [f"{tag}__fp16"], name=f"{tag}__to_fp16", to=TensorProto.FLOAT16),
                helper.make_node("Cast", [f"{tag}__fp16"], [dst], name=f"{tag}__to_fp32", to=TensorProto.FLOAT)]

    ordered: list[onnx.NodeProto] = []
    for x in g.input:
        if x.name in floats and x.name not in inits:
            rounded = f"{x.name}__rounded"
            ordered += pair(x.name, rounded, x.name)
            for n in g.node:
                n.input[:] = [rounded if i == x.name else i for i in n.input]
    for n in list(g.node):
        ordered.append(n)
        if n.op_type in FP32_OPS or n.op_type == "Constant":
            continue
        for k, o in enumerate(n.output):
            if o in floats:
                n.output[k] = f"{o}__raw"
                ordered += pair(f"{o}__raw", o, o)
    del g.node[:]
    g.node.extend(ordered)
    return out


def write_fp16_emulation(fp32_path: Path, out_path: Path) -> Path:
    from edgekit.onnx_io import load_onnx, save_onnx

    save_onnx(fp16_emulation(load_onnx(fp32_path)), out_path)
    return out_path


def simulated_runner(path: Path, threads: int | None):
    """ONNX Runtime with graph optimizations off: the graph's arithmetic as written (Q/DQ not fused into int8 kernels)."""
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path, threads=threads, optimization_level="disable")
    runner.backend = "tensorrt (simulated on onnxruntime)"
    return runner
