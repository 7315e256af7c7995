"""TensorRT accuracy without TensorRT: the fp16 storage emulation and the int8 Q/DQ graph run as written."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgekit.backends.tensorrt.simulate import FP32_OPS, fp16_emulation


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((8, 4)) * 0.3).astype(np.float32), "w")
    gamma = numpy_helper.from_array(np.float32(1.0) + rng.standard_normal(8).astype(np.float32) * 1e-3, "gamma")
    nodes = [helper.make_node("Transpose", ["w"], ["w_t"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "w_t"], ["h"], name="mm"),
             helper.make_node("LayerNormalization", ["h", "gamma"], ["n"], name="ln", axis=-1),
             helper.make_node("Softmax", ["n"], ["y"], name="sm", axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w, gamma])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_fp16_emulation_rounds_storage_and_keeps_fp32_layers():
    model = _model()
    emulated = fp16_emulation(model)
    onnx.checker.check_model(emulated)
    assert [i.name for i in emulated.graph.input] == ["x"] and [o.name for o in emulated.graph.output] == ["y"]
    inits = {i.name: numpy_helper.to_array(i) for i in emulated.graph.initializer}
    original = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert np.array_equal(inits["w"], original["w"].astype(np.float16).astype(np.float32)) and not np.array_equal(inits["w"], original["w"])
    assert np.array_equal(inits["gamma"], original["gamma"])  # a LayerNorm weight stays fp32
    casts = {n.input[0] for n in emulated.graph.node if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT16}
    assert casts == {"x", "h__raw", "w_t__raw"}  # input and every non-fp32 layer output; LayerNorm and Softmax outputs not
    assert {"LayerNormalization", "Softmax"} <= FP32_OPS
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32) * 3
    ref, out = _run(model, x), _run(emulated, x)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert 0 < np.abs(out - ref).max() < 5e-3  # fp16 rounding shows, at fp16 size


def test_fp16_emulation_clamps_weights_outside_fp16_range():
    """A mask constant such as float32's lowest (CLIP's causal mask) becomes fp16's lowest, as TensorRT clamps it,
    not -inf, and silently: no numpy overflow warning reaches the user's console."""
    import warnings

    lowest = numpy_helper.from_array(np.array([0.0, np.finfo(np.float32).min, 1e6], dtype=np.float32), "mask")
    graph = helper.make_graph([helper.make_node("Add", ["x", "mask"], ["y"], name="add")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [lowest])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emulated = fp16_emulation(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    mask = numpy_helper.to_array(emulated.graph.initializer[0])
    assert mask.tolist() == [0.0, -65504.0, 65504.0]


def test_int8_simulation_runs_the_qdq_graph_as_written(tmp_path):
    """A Q/DQ conv run by the simulation equals the same arithmetic in numpy (no integer kernel in between)."""
    from edgekit.backends.tensorrt.simulate import simulated_runner

    rng = np.random.default_rng(0)
    wq = rng.integers(-127, 128, size=(4, 3, 3, 3)).astype(np.int8)
    ws = np.full(4, 0.01, np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0), helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(np.float32(0.05), "xs"), numpy_helper.from_array(np.int8(0), "xz"), numpy_helper.from_array(wq, "wq"),
             numpy_helper.from_array(ws, "ws"), numpy_helper.from_array(np.zeros(4, np.int8), "wz")]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32) * 4  # some values saturate at +-127 * 0.05
    with simulated_runner(path, threads=1) as runner:
        y = runner.infer({"x": x})["y"]
    xd = np.clip(np.rint(x / 0.05), -128, 127) * 0.05
    wd = wq.astype(np.float32) * 0.01
    pad = np.pad(xd, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = np.zeros((1, 4, 8, 8), np.float64)
    for o in range(4):
        for i in range(8):
            for j in range(8):
                expected[0, o, i, j] = (pad[0, :, i:i + 3, j:j + 3] * wd[o]).sum()
    assert np.abs(y - expected).max() < 1e-4
