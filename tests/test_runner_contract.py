"""The runner lifecycle in one place: ``infer`` loads when needed and checks the feed for every backend (names,
dtype, rank, static dims), then ``infer_impl`` runs. Real ONNX Runtime and OpenVINO sessions on a tiny model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit import registry
from edgekit.errors import EdgekitError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """x (batch, 3, 8, 8) -> Conv 3->4 -> GlobalAveragePool -> Flatten -> MatMul 4->2 -> y (batch, 2)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    m = numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "m")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "m"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [w, m])
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_feed_is_checked_once_for_every_backend(tiny, backend):
    runner = registry.backend(backend).runner(tiny, threads=1)
    good = np.zeros((2, 3, 8, 8), np.float32)
    assert runner.infer({"x": good})["y"].shape == (2, 2)  # infer before load: it loads
    with pytest.raises(EdgekitError, match=r"missing \['x'\].*unexpected \['images'\]"):
        runner.infer({"images": good})
    with pytest.raises(EdgekitError, match="input 'x' is float64, the model takes float32"):
        runner.infer({"x": good.astype(np.float64)})
    with pytest.raises(EdgekitError, match="input 'x' has size 7 on axis 2"):
        runner.infer({"x": np.zeros((1, 3, 7, 8), np.float32)})
    with pytest.raises(EdgekitError, match="input 'x' has rank 3"):
        runner.infer({"x": np.zeros((3, 8, 8), np.float32)})
    runner.close()
