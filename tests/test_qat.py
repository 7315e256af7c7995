"""QAT over the deployed Q/DQ graph: the simulation matches ONNX Runtime, training is deterministic and resumes, and
the export writes the trained numbers back into the same graph. Real YOLOv5n weights and real COCO images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from edgekit.errors import EdgekitError
from edgekit.qat.distill import QatSettings, detection_loss, train
from edgekit.qat.graph import QdqGraph
from edgekit.quantization.ptq import quantize_static


@pytest.fixture(scope="module")
def int8(fp32_onnx, yolo, calib_images):
    family, _ = yolo
    model = onnx.load(fp32_onnx)
    result = quantize_static(model, calib_images[:8], lambda p: family.preprocess(p)[0], float_nodes=family.float_nodes(model), use_cache=False)
    return result.model


@pytest.fixture(scope="module")
def images(yolo, calib_images):
    family, _ = yolo
    return [family.preprocess(p)[0]["images"] for p in calib_images[8:14]]


def _session(model: onnx.ModelProto | str, optimize: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _score_gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a[..., 4:] - b[..., 4:]).mean())


def _gaps(model: onnx.ModelProto, graph: QdqGraph, fp32: str, images) -> tuple[float, float, float]:
    """(simulation vs ORT, ORT optimised vs ORT unoptimised, int8 vs FP32): mean score differences over images."""
    optimized, plain, float_ = _session(model), _session(model, optimize=False), _session(fp32)
    sim_ort, ort_ort, q_fp = [], [], []
    for x in images:
        with torch.no_grad():
            sim = graph(torch.from_numpy(x))[0].numpy()
        yo, yp, yf = (s.run(None, {"images": x})[0] for s in (optimized, plain, float_))
        sim_ort.append(_score_gap(sim, yp))
        ort_ort.append(_score_gap(yo, yp))
        q_fp.append(_score_gap(yo, yf))
    return float(np.mean(sim_ort)), float(np.mean(ort_ort)), float(np.mean(q_fp))


def test_fake_quant_graph_reproduces_the_deployed_qdq_model(int8, fp32_onnx, images):
    """Before training the simulation differs from ORT no more than ORT's two execution modes differ from each
    other (rounding ties, accumulation order), and far less than int8 differs from FP32."""
    graph = QdqGraph(int8).eval()
    sim_ort, ort_ort, q_fp = _gaps(int8, graph, str(fp32_onnx), images[:3])
    assert sim_ort <= 1.5 * ort_ort, (sim_ort, ort_ort)
    assert sim_ort <= 0.7 * q_fp, (sim_ort, q_fp)
    # layer by layer: the first quantized conv output equals ORT's up to one step on ties
    first = next(n.output[0] for n in int8.graph.node if n.op_type == "QuantizeLinear" and "conv" in n.input[0].lower())
    probe = onnx.ModelProto()
    probe.CopyFrom(int8)
    probe.graph.output.append(helper.make_tensor_value_info(first, onnx.TensorProto.UINT8, None))
    want = _session(probe, optimize=False).run([first], {"images": images[0]})[0].astype(np.int32)
    graph.outputs = [*graph.outputs, first]
    with torch.no_grad():
        got = graph(torch.from_numpy(images[0]))[1].numpy().astype(np.int32)
    assert np.abs(got - want).max() <= 1 and (got != want).mean() < 1e-4


def test_untrained_export_is_the_same_graph(int8):
    """The int8 weights, weight scales and int32 biases derived from the master weights are those PTQ wrote."""
    exported = QdqGraph(int8).export()
    before = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in exported.graph.initializer}
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert after[name].dtype == value.dtype, name
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_distillation_is_deterministic_resumes_and_exports_what_it_trained(int8, fp32_onnx, images, yolo, calib_images, tmp_path):
    settings = QatSettings(steps=4, batch=2, lr=1e-4, scale_lr=1e-4, checkpoint_every=2)
    family, _ = yolo
    items, transform = calib_images[8:14], lambda p: family.preprocess(p)[0]
    whole = train(int8, fp32_onnx, items, transform, settings)
    assert len(whole.losses) == 4 and all(np.isfinite(whole.losses))
    # interrupted after 2 steps (checkpoint written), then resumed by a fresh call: the same bytes as one run
    folder = tmp_path / "ckpt"
    first = train(int8, fp32_onnx, items, transform, settings, checkpoint=folder, stop_after=2)
    assert (folder / "state.safetensors").is_file() and first.resumed_from == 0 and len(first.losses) == 2
    resumed = train(int8, fp32_onnx, items, transform, settings, checkpoint=folder)
    assert resumed.resumed_from == 2 and resumed.losses == whole.losses
    assert resumed.model.SerializeToString(deterministic=True) == whole.model.SerializeToString(deterministic=True)
    # training changed the int8 weights, and ORT running the exported graph matches the trained simulation
    changed = sum(
        not np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
        for a, b in zip(int8.graph.initializer, whole.model.graph.initializer, strict=True)
    )
    assert changed > 10
    trained = QdqGraph(whole.model).eval()
    sim_ort, ort_ort, _ = _gaps(whole.model, trained, str(fp32_onnx), images[:2])
    assert sim_ort <= 1.5 * ort_ort, (sim_ort, ort_ort)


def test_trained_numbers_carry_to_tensorrt_placement(int8, fp32_onnx, yolo, calib_images):
    """What TensorRT is given from a Q/DQ graph (``edgekit.qat.transfer``): the float model whose Conv weights are
    the graph's dequantized int8 weights, and the ranges its activation scales encode, which give back the same
    scale and zero point. TensorRT's own placement from them runs those weights and lints clean."""
    from edgekit.backends.tensorrt.qdq import lint_qdq_for_tensorrt
    from edgekit.qat.transfer import trained_float_model, trained_ranges
    from edgekit.quantization.placement import TENSORRT_PLACEMENT
    from edgekit.quantization.ptq import place, tensors_for_placements
    from edgekit.quantization.spec import QParams

    family, _ = yolo
    fp32 = onnx.load(fp32_onnx)
    graph = QdqGraph(int8)
    model, convs = trained_float_model(fp32, int8)
    assert convs == len(graph.weights) > 50
    arrays = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    floats = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    conv = next(n for n in fp32.graph.node if n.op_type == "Conv" and n.name in {w.node for w in graph.weights.values()})
    wq = next(w for w in graph.weights.values() if w.node == conv.name)
    scale = arrays[wq.scale].reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(floats[conv.input[1]], arrays[wq.quantized].astype(np.float32) * scale, rtol=1e-6)
    assert not np.array_equal(floats[conv.input[1]], numpy_helper.to_array(next(i for i in fp32.graph.initializer if i.name == conv.input[1])))

    scope = family.float_nodes(fp32)
    trt_tensors = tensors_for_placements(fp32, [TENSORRT_PLACEMENT], scope, [])
    ptq = quantize_static(fp32, calib_images[:8], lambda p: family.preprocess(p)[0], float_nodes=scope, use_cache=False, also_calibrate=trt_tensors)
    ranges, replaced = trained_ranges(int8, ptq.calibration.ranges)
    qs = [n for n in int8.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in arrays]
    assert replaced == len(qs) > 50
    for q in qs[:10]:  # the encoded range reproduces the trained scale and zero point
        back = QParams.from_range(ranges[q.input[0]], "uint8")
        assert back.zero_point == int(arrays[q.input[2]]) and back.scale == pytest.approx(float(arrays[q.input[1]]), rel=1e-5)
    trt, _ = place(model, TENSORRT_PLACEMENT, ranges, scope, [], ptq.spec.settings)
    assert lint_qdq_for_tensorrt(trt) == []


def test_detection_loss_is_zero_only_at_the_teacher():
    rng = np.random.default_rng(0)
    teacher = torch.from_numpy(np.concatenate([rng.uniform(0, 640, (1, 50, 4)), rng.uniform(0, 1, (1, 50, 81))], -1).astype(np.float32))
    same = detection_loss(teacher, teacher)
    assert abs(float(same)) < 1e-5
    moved = teacher.clone()
    moved[..., 0] += 5.0
    assert float(detection_loss(moved, teacher)) > float(same)
    assert float(detection_loss(teacher.flip(1), teacher)) > float(same)


def test_unsupported_ops_are_named():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("HardSwish", ["x"], ["y"])], "g", [x], [y]))
    with pytest.raises(EdgekitError, match="HardSwish"):
        QdqGraph(model)


def test_export_with_qat_mode_interrupted_then_resumed(tmp_path, monkeypatch):
    """``quantization.mode: qat`` in a real export: SIGINT mid-training exits 130 leaving the checkpoint in the cache;
    the same command again resumes from it, and the report records the training and where it resumed."""
    import json
    import signal
    import time

    from conftest import edgekit
    from faults.test_out_dir import finish, start_export
    from faults.tiny import tiny_recipe

    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE", str(cache))
    recipe = tiny_recipe(tmp_path, quantization__mode="qat", quantization__qat={"steps": 120, "batch": 1, "checkpoint_every": 10, "count": 8},
                         targets=["onnxruntime:fp32", "onnxruntime:int8", "openvino:int8", "tensorrt:int8", "tflite:int8"])
    proc = start_export(recipe, tmp_path / "out")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(cache.glob("qat/*/state.json")) and proc.poll() is None:
        time.sleep(0.2)
    assert list(cache.glob("qat/*/state.json")), "no QAT checkpoint appeared"
    proc.send_signal(signal.SIGINT)
    interrupted = finish(proc)
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    saved = json.loads(next(cache.glob("qat/*/state.json")).read_text())["step"]
    assert 0 < saved < 120
    again = edgekit("export", recipe, "--out", tmp_path / "out")
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    record = report["tuning"]["graphs"]["model"]["qat"]
    assert record["resumed_from_step"] >= saved and record["settings"]["steps"] == 120 and record["images"] == 8
    int8 = next(v for v in report["variants"] if v["name"] == "onnxruntime:int8")
    assert int8["status"] == "measured"
    assert "qat_training" in json.dumps(int8["manifest"]["settings"])
    assert record["reaches"] == ["onnxruntime:int8", "openvino:int8", "tensorrt:int8", "tflite:int8"]
    # TensorRT: its own placement from the trained weights and scales, its accuracy simulated here
    carried = record["carried_to_tensorrt"]
    assert carried["convs"] > 10 and carried["ranges"] > 10 and (tmp_path / "out" / carried["model"]).is_file()
    trt = next(v for v in report["variants"] if v["name"] == "tensorrt:int8")
    assert trt["status"] == "simulated" and trt["metrics"]["mAP50-95"] > 0, trt
    spec = json.loads((tmp_path / "out" / "tensorrt" / "quant_spec_tensorrt.json").read_text())
    assert "trained" in spec["settings"]["qat"], spec["settings"]
    ov = next(v for v in report["variants"] if v["name"] == "openvino:int8")
    assert ov["status"] == "measured" and "QAT-trained" in json.dumps(ov["manifest"]["settings"]["backend"])
    # LiteRT: the trained weights written into the PyTorch module it converts, the trained ranges matched onto it
    tfl = next(v for v in report["variants"] if v["name"] == "tflite:int8")
    qat = tfl["manifest"]["settings"]["backend"]["qat"]
    assert tfl["status"] == "measured" and qat["ranges"] == "trained", tfl
    assert qat["parameters"] == qat["trained_initializers"] > 10, qat
    assert "QAT-trained" in tfl["manifest"]["settings"]["backend"]["quantization"]["calibration"]["method"]
    assert_converted_trained_weights(tmp_path / "out")


def assert_converted_trained_weights(out: Path) -> None:
    """The FP32 ``.tflite`` LiteRT quantized computes what QAT's trained FP32 ONNX graph computes (not the original)."""
    from conftest import COCO
    from PIL import Image

    from edgekit.backends.litert.runner import LiteRTRunner

    image = sorted((COCO / "images").glob("*.jpg"))[0]
    x = np.asarray(Image.open(image).convert("RGB").resize((128, 128)), dtype=np.float32).transpose(2, 0, 1)[None] / 255
    want = {name: ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0][..., 4:]
            for name in ("model_fp32.onnx", "model_fp32_qat.onnx")}
    with LiteRTRunner(out / "tflite" / "model_fp32_qat.tflite", threads=2, input_names=["images"], output_names=["boxes", "scores"]) as tfl:
        got = tfl.infer({"images": x})["scores"]
    assert np.abs(got - want["model_fp32_qat.onnx"]).max() < 1e-4
    assert np.abs(got - want["model_fp32.onnx"]).max() > 1e-3  # training moved the scores: the check above can fail


def test_recipe_refuses_qat_on_the_evaluation_images(tmp_path):
    from conftest import COCO, edgekit
    from faults.tiny import assert_one_line_error, tiny_recipe

    recipe = tiny_recipe(tmp_path, quantization__mode="qat", quantization__qat={"images": [str(COCO / "images")]})
    assert_one_line_error(edgekit("export", recipe, "--out", tmp_path / "out"), "evaluation folder")


def test_auto_mode_trains_only_when_the_search_misses_its_budget(tmp_path, monkeypatch):
    """``quantization.mode: auto`` end to end: a budget the search meets keeps PTQ; one no candidate can meet (a
    negative loss) runs QAT, and the report records the decision either way."""
    import json

    from conftest import edgekit
    from faults.tiny import tiny_recipe

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    decisions = {}
    for name, budget in (("met", 1000.0), ("missed", -1.0)):
        recipe = tiny_recipe(tmp_path, f"{name}.yaml", quantization__mode="auto",
                             quantization__search={"time_limit_s": 20, "latency_runs": 3, "images": 8, "max_loss_pt": budget},
                             quantization__qat={"steps": 6, "batch": 1, "count": 8})
        result = edgekit("export", recipe, "--out", tmp_path / name)
        assert result.returncode == 0, result.stderr[-3000:]
        record = json.loads((tmp_path / name / "report.json").read_text())["tuning"]["graphs"]["model"]
        decisions[name] = (record["qat_decision"], record["search"]["met"], "qat" in record, "applied" in record["search"])
    assert decisions["met"] == ("PTQ: the search met max_loss_pt", True, False, False)
    assert decisions["missed"] == ("QAT: the search missed max_loss_pt", False, True, True)  # QAT trains all int8
