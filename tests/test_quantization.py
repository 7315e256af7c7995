"""INT8 PTQ: observers, weight quantization, Q/DQ placement, calibration streaming/cache, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import COCO

from edgekit.errors import EdgekitError
from edgekit.quantization.calibration import SmallCalibrationSetWarning, calibration_images, collect_ranges
from edgekit.quantization.observers import Histogram, MinMax
from edgekit.quantization.ptq import quantize_static
from edgekit.quantization.qdq import quantize_weight
from edgekit.quantization.spec import QParams, Range


def test_percentile_clips_outliers_minmax_does_not():
    rng = np.random.default_rng(0)
    x = rng.normal(size=1_000_000).astype(np.float32)
    x[:10] = 50.0
    mm = MinMax()
    mm.update(x)
    hist = Histogram(mm.low, mm.high)
    hist.update(x)
    assert mm.range().high == 50.0
    p = hist.percentile(99.9)
    assert 2.9 < p.high < 3.4 and -3.4 < p.low < -2.9  # N(0,1) 99.9th percentile is 3.09
    assert hist.entropy().high < 50.0


def test_qparams_represent_zero_exactly_and_cover_range():
    qp = QParams.from_range(Range(-0.3, 6.0))
    assert qp.dtype == "uint8" and 0 <= qp.zero_point <= 255
    assert abs(qp.scale * (255 - qp.zero_point) - 6.0) < 2 * qp.scale
    assert QParams.from_range(Range(0.0, 1.0)).zero_point == 0


def test_weight_quantization_error_is_half_a_step_per_channel():
    w = np.random.default_rng(1).normal(size=(16, 8, 3, 3)).astype(np.float32) * np.arange(1, 17)[:, None, None, None]
    q, scale = quantize_weight(w, axis=0)
    assert q.dtype == np.int8 and scale.shape == (16,) and np.abs(q).max() <= 127
    err = np.abs(q.astype(np.float32) * scale[:, None, None, None] - w)
    assert (err <= scale[:, None, None, None] / 2 + 1e-6).all()


def test_calibration_folder_errors(tmp_path):
    with pytest.raises(EdgekitError, match="calibration folder is empty"):
        calibration_images(tmp_path, 10)
    (tmp_path / "a.jpg").write_bytes((COCO / "calib_images").iterdir().__next__().read_bytes())
    (tmp_path / "labels.txt").write_text("x")
    with pytest.raises(EdgekitError, match="labels.txt.*non-image"):
        calibration_images(tmp_path, 10)
    with pytest.raises(EdgekitError, match="not found"):
        calibration_images(tmp_path / "absent", 10)


def test_small_calibration_set_warns(calib_images):
    with pytest.warns(SmallCalibrationSetWarning, match="only 8 calibration images"):
        calibration_images(calib_images[0].parent, 8)


@pytest.fixture(scope="module")
def int8_small(fp32_onnx, yolo, calib_images):
    family, _ = yolo
    model = onnx.load(fp32_onnx)
    result = quantize_static(model, calib_images[:8], lambda p: family.preprocess(p)[0], float_nodes=family.float_nodes(model), use_cache=False)
    return model, result


def test_head_decode_stays_float_and_backbone_is_int8(int8_small, yolo):
    family, _ = yolo
    model, result = int8_small
    float_nodes = set(family.float_nodes(model))
    assert float_nodes and all(n.startswith("/model.24/") for n in float_nodes)
    qmodel = result.model
    producers = {o: n for n in qmodel.graph.node for o in n.output}
    for node in qmodel.graph.node:
        if node.name in float_nodes:  # no float-kept node reads a dequantized activation made for it
            for name in node.input:
                prod = producers.get(name)
                assert prod is None or prod.op_type != "DequantizeLinear" or not prod.name.startswith("/model.24/"), node.name
    ops = Counter(n.op_type for n in qmodel.graph.node)
    assert ops["QuantizeLinear"] > 150 and ops["Conv"] == 60


def test_onnxruntime_fuses_placement_into_integer_kernels(int8_small, tmp_path):
    """The placement exists for speed: ORT must turn it into QLinear kernels, not DQ + float Conv."""
    _, result = int8_small
    src, opt = tmp_path / "int8.onnx", tmp_path / "int8.opt.onnx"
    onnx.save(result.model, src)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(opt)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(opt).graph.node)
    assert ops["QLinearConv"] == 57, ops  # every conv but the three float head convs
    assert ops["Conv"] == 3 and ops["QLinearMul"] >= 57 and ops["QLinearSigmoid"] >= 57


def test_int8_outputs_track_fp32(int8_small, yolo, eval_images, tmp_path):
    family, _ = yolo
    model, result = int8_small
    feed = family.preprocess(eval_images[0])[0]
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0][0]
    out = ort.InferenceSession(result.model.SerializeToString()).run(None, feed)[0][0]
    conf_ref, conf_out = ref[:, 4], out[:, 4]
    assert np.corrcoef(conf_ref, conf_out)[0, 1] > 0.98
    assert np.abs(ref[:, :4] - out[:, :4]).mean() < 2.0  # pixels


def test_quantization_is_reproducible_and_cached(fp32_onnx, yolo, calib_images):
    family, _ = yolo
    model = onnx.load(fp32_onnx)
    prep = lambda p: family.preprocess(p)[0]  # noqa: E731
    kwargs = dict(float_nodes=family.float_nodes(model), method="minmax")
    first = quantize_static(model, calib_images[:4], prep, **kwargs)
    again = quantize_static(model, calib_images[:4], prep, **kwargs)
    other = quantize_static(model, calib_images[4:8], prep, **kwargs)
    assert not first.calibration.from_cache and again.calibration.from_cache
    assert first.model.SerializeToString(deterministic=True) == again.model.SerializeToString(deterministic=True)
    assert other.calibration.key != first.calibration.key and not other.calibration.from_cache
    uncached = quantize_static(model, calib_images[:4], prep, use_cache=False, **kwargs)
    assert uncached.model.SerializeToString(deterministic=True) == first.model.SerializeToString(deterministic=True)


def test_calibration_memory_does_not_grow_with_images(fp32_onnx, yolo, calib_images):
    """Streaming: one image's activations in memory at a time, so 24 images cost what 4 do."""
    from edgekit.profiling.memory import PeakMemory

    family, _ = yolo
    model = onnx.load(fp32_onnx)
    tensors = [n.output[0] for n in model.graph.node if n.op_type in ("Conv", "Mul")]
    prep = lambda p: family.preprocess(p)[0]  # noqa: E731
    collect_ranges(model, tensors, calib_images[:2], prep, method="percentile", use_cache=False)  # warm up allocators
    with PeakMemory() as small:
        collect_ranges(model, tensors, calib_images[:4], prep, method="percentile", use_cache=False)
    with PeakMemory() as large:
        collect_ranges(model, tensors, calib_images[:24], prep, method="percentile", use_cache=False)
    assert large.peak_mb < small.peak_mb + 150, (small.peak_mb, large.peak_mb)

