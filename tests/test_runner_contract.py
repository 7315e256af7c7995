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


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_dynamic_dims_match_any_size_and_close_drops_the_cached_metadata(tiny, backend):
    with registry.backend(backend).runner(tiny, threads=1) as runner:
        assert runner.infer({"x": np.zeros((5, 3, 8, 8), np.float32)})["y"].shape == (5, 2)  # "batch" is dynamic
        with pytest.raises(EdgekitError, match=r"input 'x' is list, the model takes float32"):
            runner.infer({"x": np.zeros((1, 3, 8, 8)).tolist()})
    assert "_feed_meta" not in runner.__dict__  # close() forgot the inputs; the next infer loads and reads them again
    assert runner.infer({"x": np.zeros((1, 3, 8, 8), np.float32)})["y"].shape == (1, 2)
    runner.close()


def test_check_feed_rules():
    from edgekit.runners.base import TensorMeta, check_feed

    meta = {"a": TensorMeta("a", (None, "seq", -1, 4), np.dtype(np.int64))}
    check_feed({"a": np.zeros((2, 9, 7, 4), np.int64)}, meta)  # None, a name and -1 are dynamic
    with pytest.raises(EdgekitError, match=r"^m\.onnx: input 'a' has size 3 on axis 3 .* -- fix: resize the input$"):
        check_feed({"a": np.zeros((2, 9, 7, 3), np.int64)}, meta, "m.onnx")
    with pytest.raises(EdgekitError, match=r"input 'a' is int32, the model takes int64 -- fix: cast it with \.astype\(np\.int64\)"):
        check_feed({"a": np.zeros((2, 9, 7, 4), np.int32)}, meta)


def test_litert_feed_leaves_the_dims_it_adapts_dynamic():
    """LiteRT checks what callers feed (NCHW, int64 ids): batch free on a batch-1 graph, token length free when padded."""
    from edgekit.backends.litert.runner import LiteRTRunner

    runner = LiteRTRunner("unused.tflite", input_names=["input_ids", "attention_mask", "pixel_values"], pad_sequences=True)
    runner.interpreter = object()  # "loaded": the details below stand in for the interpreter's
    ids = {"shape": np.array([1, 77]), "dtype": np.int32, "quantization": (0.0, 0)}
    pixels = {"shape": np.array([1, 224, 224, 3]), "dtype": np.int8, "quantization": (0.02, -1)}
    runner._in = [ids, dict(ids), pixels]
    assert [(m.name, m.shape, m.dtype) for m in runner.inputs] == [
        ("input_ids", (1, 77), np.int64), ("attention_mask", (1, 77), np.int64), ("pixel_values", (1, 3, 224, 224), np.float32)]
    assert [m.shape for m in runner.feed_inputs()] == [(None, None), (None, None), (None, 3, 224, 224)]
