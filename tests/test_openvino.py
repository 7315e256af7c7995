"""OpenVINO backend: the runner contract, settings read-back, errors, and NNCF INT8 IR of the real YOLOv5n."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ov = pytest.importorskip("openvino", reason='openvino is not installed (pip install -e ".[openvino]")')

from edgekit.backends.openvino.runner import OpenVinoRunner  # noqa: E402
from edgekit.errors import EdgekitError  # noqa: E402
from edgekit.runners.base import Runner  # noqa: E402


def _tiny_onnx(path: Path) -> tuple[Path, np.ndarray]:
    """Conv(3->4, 1x1) + Relu on a (1, 3, 8, 8) input, opset 17."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path, weight


def _reference(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return np.maximum(np.einsum("oc,bchw->bohw", weight[:, :, 0, 0], x), 0.0)


def test_runner_contract_tiny_model(tmp_path):
    path, weight = _tiny_onnx(tmp_path / "tiny.onnx")
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    runner = OpenVinoRunner(path, threads=1)
    assert isinstance(runner, Runner) and runner.backend == "openvino"
    with runner as r:
        r.load()  # idempotent
        assert [(m.name, m.shape, m.dtype) for m in r.inputs] == [("x", (1, 3, 8, 8), np.dtype(np.float32))]
        assert [(m.name, m.shape, m.dtype) for m in r.outputs] == [("y", (1, 4, 8, 8), np.dtype(np.float32))]
        out = r.infer({"x": x})
        assert list(out) == ["y"] and out["y"].shape == (1, 4, 8, 8)
        np.testing.assert_allclose(out["y"], _reference(x, weight), rtol=1e-4, atol=1e-5)
        again = r.infer({"x": x})["y"]
        assert again is not out["y"]  # outputs are copies, not views of the request's buffers
    assert runner.compiled is None
    runner.close()  # closing twice is fine


def test_settings_read_back(tmp_path):
    path, _ = _tiny_onnx(tmp_path / "tiny.onnx")
    with OpenVinoRunner(path, threads=1, precision_hint="f32") as r:
        assert r.settings["INFERENCE_NUM_THREADS"] == 1
        assert r.settings["INFERENCE_PRECISION_HINT"] == "f32"
        assert r.settings["PERFORMANCE_HINT"] == "LATENCY"
        assert r.settings["device"] == "CPU"
    with OpenVinoRunner(path, threads=2, precision_hint="bf16") as r:
        assert r.settings["INFERENCE_NUM_THREADS"] == 2
        # CPUs without native bf16 fall back to f32; the read-back says what actually runs
        assert r.settings["INFERENCE_PRECISION_HINT"] in ("bf16", "f32")
    with pytest.raises(EdgekitError, match="precision hint"):
        OpenVinoRunner(path, precision_hint="int4")


def test_ir_saved_atomically_and_runs(tmp_path):
    from edgekit.backends.openvino.nncf_quant import save_ir_atomic

    path, weight = _tiny_onnx(tmp_path / "tiny.onnx")
    xml = save_ir_atomic(ov.convert_model(str(path)), tmp_path / "ir" / "tiny.xml")
    assert sorted(p.name for p in xml.parent.iterdir()) == ["tiny.bin", "tiny.xml"]  # no staging folder left
    x = np.ones((1, 3, 8, 8), np.float32)
    with OpenVinoRunner(xml) as r:
        np.testing.assert_allclose(r.infer({"x": x})["y"], _reference(x, weight), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["missing", "corrupt_onnx", "corrupt_xml", "xml_without_bin"])
def test_bad_model_gives_one_line_error_naming_the_file(tmp_path, kind):
    path = tmp_path / ("model.xml" if "xml" in kind else "model.onnx")
    if kind == "corrupt_onnx":
        path.write_bytes(b"\x08\x07 this is not an onnx model" * 10)
    elif kind == "corrupt_xml":
        path.write_text("<net><layers><broken")
        path.with_suffix(".bin").write_bytes(b"\0" * 16)
    elif kind == "xml_without_bin":
        path.write_text("<net></net>")
    with pytest.raises(EdgekitError) as info:
        OpenVinoRunner(path).load()
    message = str(info.value)
    assert "model." in message and "\n" not in message and "fix:" in message


def test_real_yolov5n_fp32_matches_onnxruntime(fp32_onnx, eval_images, yolo):
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    family, _ = yolo
    feed, _ = family.preprocess(eval_images[0])
    with OpenVinoRunner(fp32_onnx, threads=2, precision_hint="f32") as r:
        assert [m.name for m in r.inputs] == ["images"] and r.outputs[0].shape == (1, 25200, 85)
        got = r.infer(feed)["output0"]
    want = OnnxRuntimeRunner(fp32_onnx, threads=2).infer(feed)["output0"]
    assert got.shape == want.shape
    # boxes are in pixels (0..640), scores in 0..1: compare relative to each channel group's magnitude
    assert np.abs(got[..., :4] - want[..., :4]).max() < 1e-3 * np.abs(want[..., :4]).max()
    assert np.abs(got[..., 4:] - want[..., 4:]).max() < 1e-3


def _ignored_consumers_of_fake_quantize(ir_model, ignored: set[str]) -> list[str]:
    bad = []
    for op in ir_model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        consumers = {t.get_node().get_friendly_name() for out in op.outputs() for t in out.get_target_inputs()}
        bad += sorted(consumers & ignored)
    return bad


def test_int8_ir_keeps_head_decode_float_and_tracks_fp32(fp32_onnx, calib_images, eval_images, yolo, tmp_path):
    from edgekit.backends.base import LazyFeeds
    from edgekit.backends.openvino.nncf_quant import openvino_ignored_names, quantize_openvino

    family, _ = yolo
    onnx_model = onnx.load(fp32_onnx)
    float_nodes = family.float_nodes(onnx_model)
    ignored = set(openvino_ignored_names(ov.convert_model(str(fp32_onnx)), onnx_model, float_nodes))
    # the decode (3 sigmoids, the fused grid/anchor arithmetic) and the output concat are covered
    assert {"/model.24/Sigmoid", "/model.24/Sigmoid_1", "/model.24/Sigmoid_2", "output0"} <= ignored
    assert not any(name.startswith("/model.24/m.") for name in ignored)  # the head convs stay quantizable

    feeds = LazyFeeds(calib_images[:16], lambda p: family.preprocess(p)[0])  # the calibration feeds a Graph carries
    xml = quantize_openvino(fp32_onnx, tmp_path / "int8.xml", feeds, float_nodes)
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    ir = ov.Core().read_model(str(xml))
    ops = list(ir.get_ordered_ops())
    fake_quantize = [op for op in ops if op.get_type_name() == "FakeQuantize"]
    convs = [op for op in ops if op.get_type_name() == "Convolution"]
    assert len(fake_quantize) >= len(convs) > 50
    assert _ignored_consumers_of_fake_quantize(ir, ignored) == []
    # every op downstream of the head convs' outputs is free of FakeQuantize
    head_convs = [op for op in ops if op.get_friendly_name() in {f"/model.24/m.{i}/Conv" for i in range(3)}]
    assert len(head_convs) == 3
    seen, stack = set(), list(head_convs)
    while stack:
        op = stack.pop()
        for out in op.outputs():
            for target in out.get_target_inputs():
                node = target.get_node()
                if node.get_friendly_name() not in seen:
                    seen.add(node.get_friendly_name())
                    assert node.get_type_name() != "FakeQuantize", node.get_friendly_name()
                    stack.append(node)

    feed, _ = family.preprocess(eval_images[0])
    with OpenVinoRunner(fp32_onnx, threads=2) as r:
        ref = r.infer(feed)["output0"][0]
    with OpenVinoRunner(xml, threads=2) as r:
        got = r.infer(feed)["output0"][0]
    assert np.isfinite(got).all()
    assert np.corrcoef(got[:, 4], ref[:, 4])[0, 1] > 0.95  # objectness
