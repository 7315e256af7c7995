"""TensorRT backend: Q/DQ placement and lint, build config, trtexec command lines, engine manifests, runner.

Everything except the tests marked with ``pytest.importorskip("tensorrt")`` runs without TensorRT or a GPU.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import stand_in_trtexec
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from edgekit.backends.tensorrt.engine import (
    TensorRTBuildConfig,
    build_engine,
    check_engine_manifest,
    manifest_path,
    trtexec_command,
    write_engine_manifest,
)
from edgekit.backends.tensorrt.qdq import (
    TENSORRT_PLACEMENT,
    build_tensorrt_spec,
    lint_qdq_for_tensorrt,
    quantize_for_tensorrt,
)
from edgekit.errors import EdgekitError
from edgekit.quantization.ptq import quantize_static

NEEDS_TRT = "TensorRT is not installed: needs an NVIDIA GPU (or Jetson) with TensorRT 10/11 and cuda-python"


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------ placement on YOLOv5n


@pytest.fixture(scope="module")
def yolo_int8(fp32_onnx, yolo, calib_images):
    """FP32 model, ORT-placement INT8 and TensorRT-placement INT8, each calibrated on the same 8 images."""
    family, _ = yolo
    model = onnx.load(fp32_onnx)
    prep = lambda p: family.preprocess(p)[0]  # noqa: E731
    float_nodes = family.float_nodes(model)
    ort_q = quantize_static(model, calib_images[:8], prep, float_nodes=float_nodes, use_cache=False)
    trt_q = quantize_for_tensorrt(model, calib_images[:8], prep, float_nodes=float_nodes, use_cache=False)
    return model, ort_q, trt_q


def test_ort_placement_breaks_tensorrt_rules(yolo_int8):
    _, ort_q, _ = yolo_int8
    issues = lint_qdq_for_tensorrt(ort_q.model)
    rules = Counter(i.rule for i in issues)
    assert rules["zero-point-dtype"] > 0 and rules["zero-point-zero"] > 0, rules
    first = issues[0]
    assert first.node and first.node in {n.name for n in ort_q.model.graph.node}
    assert f"[{first.rule}]" in str(first) and "uint8" in str(first)


def test_tensorrt_placement_lints_clean(yolo_int8):
    _, _, trt_q = yolo_int8
    assert lint_qdq_for_tensorrt(trt_q.model) == []
    qmodel = trt_q.model
    inits = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    producers = {o: n for n in qmodel.graph.node for o in n.output}
    quants = [n for n in qmodel.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quants) > 50
    for q in quants:
        zp = inits[q.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
        prod = producers.get(q.input[0])
        assert prod is None or prod.op_type != "Conv", f"{q.name} quantizes a Conv output"
    for node in qmodel.graph.node:  # SiLU stays float: TensorRT fuses it into the conv
        if node.op_type in ("Sigmoid", "Mul"):
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input), node.name
    weight_dq = [n for n in qmodel.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    assert weight_dq and all(next(a.i for a in n.attribute if a.name == "axis") == 0 for n in weight_dq)
    assert not any(inits[n.input[0]].dtype == np.int32 for n in qmodel.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    assert trt_q.spec.settings["placement"] == "tensorrt"
    assert all(qp.dtype == "int8" and qp.zero_point == 0 for qp in trt_q.spec.activations.values())


def test_quantize_static_with_tensorrt_placement_lints_clean(yolo_int8, yolo, calib_images):
    """The generic PTQ under the TensorRT placement is the TensorRT quantizer; int32 bias DQs also pass the rules."""
    from dataclasses import replace

    family, _ = yolo
    model, _, trt_q = yolo_int8
    prep = lambda p: family.preprocess(p)[0]  # noqa: E731
    result = quantize_static(model, calib_images[:8], prep, float_nodes=family.float_nodes(model), placement=TENSORRT_PLACEMENT, use_cache=False)
    assert result.model.SerializeToString(deterministic=True) == trt_q.model.SerializeToString(deterministic=True)
    int32_bias = quantize_static(model, calib_images[:8], prep, float_nodes=family.float_nodes(model), placement=replace(TENSORRT_PLACEMENT, float_bias=False))
    assert lint_qdq_for_tensorrt(int32_bias.model) == []
    assert any(n.name.endswith("_bias_DequantizeLinear") for n in int32_bias.model.graph.node)
    assert not any(n.name.endswith("_bias_DequantizeLinear") for n in result.model.graph.node)


def test_onnxruntime_runs_tensorrt_placement_and_tracks_fp32(yolo_int8, yolo, eval_images):
    family, _ = yolo
    model, _, trt_q = yolo_int8
    for path in eval_images[:2]:
        feed = family.preprocess(path)[0]
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0][0]
        out = ort.InferenceSession(trt_q.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0][0]
        assert np.corrcoef(ref[:, 4], out[:, 4])[0, 1] > 0.98
        assert np.abs(ref[:, :4] - out[:, :4]).mean() < 2.5  # pixels


# ---------------------------------------------------------------------------------------- lint on small graphs


def _qdq_conv(weight_axis=0, act_scale=0.02, zp_type=TensorProto.INT8, zp_value=0, opset=17, act_scales=1,
              dq_scale=None, consumer="DequantizeLinear", weight_const=True) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(W via DQ) -> y; every knob breaks one rule."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 127, size=(4, 3, 3, 3)).astype(np.int8)
    w_scale = np.full((w.shape[weight_axis],), 0.01, np.float32)
    np_zp = helper.tensor_dtype_to_np_dtype(zp_type)
    scale = np.full((act_scales,), act_scale, np.float32) if act_scales > 1 else np.array(act_scale, np.float32)
    zp = np.full(scale.shape, zp_value, np_zp)
    inits = [
        numpy_helper.from_array(scale, "x_scale"),
        numpy_helper.from_array(zp, "x_zp"),
        numpy_helper.from_array(np.full(scale.shape, dq_scale if dq_scale is not None else act_scale, np.float32), "x_dq_scale"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros_like(w_scale, dtype=np.int8), "w_zp"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    if weight_const:
        inits.append(numpy_helper.from_array(w, "w_q"))
    else:
        inputs.append(helper.make_tensor_value_info("w_q", TensorProto.INT8, list(w.shape)))
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="x_Q", axis=1)]
    if consumer == "DequantizeLinear":
        nodes.append(helper.make_node("DequantizeLinear", ["x_q", "x_dq_scale", "x_zp"], ["x_dq"], name="x_DQ", axis=1))
    else:
        nodes.append(helper.make_node("Cast", ["x_q"], ["x_dq"], name="x_cast", to=TensorProto.FLOAT))
    nodes += [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_DQ", axis=weight_axis),
        helper.make_node("Conv", ["x_dq", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _rules(model) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for issue in lint_qdq_for_tensorrt(model):
        out.setdefault(issue.rule, []).append(issue.node)
    return out


def test_lint_clean_small_graph_runs_in_onnxruntime():
    model = _qdq_conv()
    assert _rules(model) == {}
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})
    assert out[0].shape == (1, 4, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "rule", "node"),
    [
        (dict(weight_axis=1), "weight-axis", "w_DQ"),
        (dict(zp_type=TensorProto.UINT8, zp_value=128), "zero-point-dtype", "x_Q"),
        (dict(zp_value=3), "zero-point-zero", "x_Q"),
        (dict(act_scale=-0.5), "scale-value", "x_Q"),
        (dict(act_scale=float("inf")), "scale-value", "x_Q"),
        (dict(act_scales=3), "activation-per-tensor", "x_Q"),
        (dict(dq_scale=0.03), "qdq-mismatch", "x_DQ"),
        (dict(consumer="Cast"), "q-without-dq", "x_Q"),
        (dict(opset=12), "opset", "<model>"),
        (dict(weight_const=False), "weight-constant", "w_DQ"),
    ],
)
def test_lint_names_node_and_rule(kwargs, rule, node):
    rules = _rules(_qdq_conv(**kwargs))
    assert node in rules.get(rule, []), rules


def test_lint_int32_paths():
    """An int32 DQ is fine as a Conv bias, not elsewhere; Q of an integer tensor is never fine."""
    bias = numpy_helper.from_array(np.arange(4, dtype=np.int32), "b_q")
    inits = [bias, numpy_helper.from_array(np.full(4, 1e-4, np.float32), "b_scale"), numpy_helper.from_array(np.zeros(4, np.int32), "b_zp"),
             numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w"), numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], name="bias_DQ", axis=0),
        helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv"),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b2"], name="stray_DQ", axis=0),
        helper.make_node("Add", ["b2", "b2"], ["z2"], name="add"),
        helper.make_node("QuantizeLinear", ["idx", "s", "z"], ["idx_q"], name="int_Q"),
        helper.make_node("DequantizeLinear", ["idx_q", "s", "z"], ["idx_dq"], name="int_DQ"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]), helper.make_tensor_value_info("idx", TensorProto.INT32, [4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z2", "idx_dq")], inits,
    )
    rules = _rules(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert sorted(rules.get("int-path", [])) == ["int_Q", "stray_DQ"], rules


def test_gemm_weight_axis_follows_transb():
    from edgekit.quantization.spec import Range

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32), "w")  # (K=8, N=16)
    w_t = numpy_helper.from_array(np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32), "w_t")  # (N, K)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm"), helper.make_node("Gemm", ["x", "w_t"], ["y2"], name="gemm_t", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 16]) for n in ("y", "y2")], [w, w_t])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    spec = build_tensorrt_spec(model, {"x": Range(-4.0, 4.0)}, [])
    assert spec.weights == {"w": 1, "w_t": 0}
    from edgekit.backends.tensorrt.qdq import insert_qdq_for_tensorrt

    qmodel = insert_qdq_for_tensorrt(model, spec)
    assert lint_qdq_for_tensorrt(qmodel) == []
    x = np.random.default_rng(2).normal(size=(2, 8)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    out = ort.InferenceSession(qmodel.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for a, b in zip(ref, out):
        assert np.abs(a - b).max() < 0.1 * np.abs(a).max()


# ----------------------------------------------------------------------------------------------- build config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"precison": "fp16"}, "precison"),
        ({"precision": "int4"}, "precision"),
        ({"workspace_mb": 0}, "workspace_mb"),
        ({"dynamic_batch": {"min": 4, "opt": 2, "max": 8}}, "min <= opt <= max"),
        ({"dynamic_batch": {"min": 1, "opt": 2, "max": 8, "step": 1}}, "step"),
        ({"gpu_fallback": True}, "dla_core"),
        ({"dla_core": 0, "precision": "fp32"}, "DLA runs fp16 or int8"),
        ({"precision": "int8", "strongly_typed": False}, "strongly typed"),
        ({"builder_optimization_level": 6}, "builder_optimization_level"),
        ({"dla_core": -1}, "dla_core"),
    ],
)
def test_build_config_rejects(data, message):
    with pytest.raises(ValidationError, match=message):
        TensorRTBuildConfig.model_validate(data)
    with pytest.raises(EdgekitError, match="invalid TensorRT build setting"):
        TensorRTBuildConfig.parse(data, "recipe.yaml")


def test_build_config_defaults():
    config = TensorRTBuildConfig()
    assert config.precision == "fp16" and not config.is_strongly_typed and config.workspace_mb == 1024
    assert TensorRTBuildConfig(precision="int8").is_strongly_typed


# ----------------------------------------------------------------------------------------------- trtexec lines


def test_trtexec_fp16():
    cmd = trtexec_command("m.onnx", "m.engine", {"precision": "fp16", "workspace_mb": 2048})
    assert cmd == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine", "--skipInference", "--fp16", "--memPoolSize=workspace:2048M"]


def test_trtexec_int8_strongly_typed():
    cmd = trtexec_command("q.onnx", "q.plan", TensorRTBuildConfig(precision="int8", timing_cache="cache.bin", builder_optimization_level=5))
    assert cmd == [
        "trtexec", "--onnx=q.onnx", "--saveEngine=q.plan", "--skipInference", "--stronglyTyped",
        "--memPoolSize=workspace:1024M", "--timingCacheFile=cache.bin", "--builderOptimizationLevel=5",
    ]
    assert not any(arg in ("--fp16", "--int8") for arg in cmd)  # strong typing forbids precision flags


def test_trtexec_fp32_has_no_precision_flag():
    assert trtexec_command("m.onnx", "m.engine", {"precision": "fp32"})[4:] == ["--memPoolSize=workspace:1024M"]


def test_trtexec_dynamic_batch(tmp_path):
    config = {"precision": "int8", "dynamic_batch": {"min": 1, "opt": 4, "max": 8}}
    expected_shapes = ["--minShapes=images:1x3x640x640", "--optShapes=images:4x3x640x640", "--maxShapes=images:8x3x640x640"]
    cmd = trtexec_command("m.onnx", "m.engine", config, input_shapes={"images": ["batch", 3, 640, 640]})
    assert cmd == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine", "--skipInference", "--stronglyTyped", "--memPoolSize=workspace:1024M", *expected_shapes]
    # read from the ONNX file when not given (initializers listed as inputs are ignored)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["images"], ["out"])], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 640, 640])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert trtexec_command(path, "m.engine", config)[-3:] == expected_shapes
    with pytest.raises(EdgekitError, match=r"axis 2 \(h\) is dynamic and has no range"):
        trtexec_command("m.onnx", "m.engine", config, input_shapes={"images": ["batch", 3, "h", "w"]})


def test_trtexec_named_dynamic_axes():
    """A text tower's sequence axis gets its own range (1 up to the exported context) beside the batch's."""
    config = {"precision": "int8", "dynamic_batch": {"min": 1, "opt": 2, "max": 4}, "dims": {"sequence": {"min": 1, "opt": 77, "max": 77}}}
    cmd = trtexec_command("t.onnx", "t.engine", config, input_shapes={"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]})
    assert cmd[-3:] == ["--minShapes=input_ids:1x1,attention_mask:1x1", "--optShapes=input_ids:2x77,attention_mask:2x77",
                        "--maxShapes=input_ids:4x77,attention_mask:4x77"]
    fixed_batch = trtexec_command("t.onnx", "t.engine", {"precision": "fp16", "dims": {"sequence": {"min": 1, "opt": 77, "max": 77}}},
                                  input_shapes={"input_ids": [1, "sequence"]})
    assert fixed_batch[-3:] == ["--minShapes=input_ids:1x1", "--optShapes=input_ids:1x77", "--maxShapes=input_ids:1x77"]


def test_trtexec_dla():
    cmd = trtexec_command("q.onnx", "q.engine", {"precision": "int8", "dla_core": 1, "gpu_fallback": True})
    assert cmd == [
        "trtexec", "--onnx=q.onnx", "--saveEngine=q.engine", "--skipInference", "--stronglyTyped",
        "--memPoolSize=workspace:1024M", "--useDLACore=1", "--allowGPUFallback",
    ]
    assert "--allowGPUFallback" not in trtexec_command("q.onnx", "q.engine", {"precision": "fp16", "dla_core": 0})


# ------------------------------------------------------------------------------------------------- manifests

DEVICE = {"tensorrt_version": "10.3.0", "cuda_version": "12.6", "gpu_name": "Orin", "compute_capability": "8.7", "l4t": "# R36 (release), REVISION: 4.3"}


@pytest.fixture()
def engine(tmp_path):
    onnx_path, engine_path = tmp_path / "model.onnx", tmp_path / "model.engine"
    onnx_path.write_bytes(b"onnx bytes")
    engine_path.write_bytes(b"plan bytes")
    config = TensorRTBuildConfig(precision="int8")
    write_engine_manifest(engine_path, onnx_path, config, DEVICE, "trtexec", trtexec_command(onnx_path, engine_path, config))
    return engine_path


def test_manifest_contents(engine, tmp_path):
    manifest = json.loads(manifest_path(engine).read_text())
    assert manifest_path(engine).name == "model.engine.json"
    assert manifest["tensorrt_version"] == "10.3.0" and manifest["compute_capability"] == "8.7" and manifest["gpu_name"] == "Orin"
    assert manifest["cuda_version"] == "12.6" and manifest["l4t"].startswith("# R36")
    import hashlib

    assert manifest["onnx_sha256"] == hashlib.sha256(b"onnx bytes").hexdigest()
    assert manifest["engine_sha256"] == hashlib.sha256(b"plan bytes").hexdigest()
    assert manifest["config"]["precision"] == "int8" and manifest["strongly_typed"] is True
    assert "--stronglyTyped" in manifest["trtexec_command"]
    assert not list(tmp_path.glob("*.partial"))


def test_manifest_matches(engine):
    check_engine_manifest(engine, DEVICE)
    check_engine_manifest(engine, {"versions": {"tensorrt": "10.3.0"}, "gpus": [{"name": "Orin", "compute_capability": "8.7"}]})


def test_manifest_tensorrt_version_mismatch(engine):
    with pytest.raises(EdgekitError, match=r"model\.engine: engine was built with TensorRT 10\.3\.0, this device has TensorRT 10\.7\.0"):
        check_engine_manifest(engine, {**DEVICE, "tensorrt_version": "10.7.0"})
    with pytest.raises(EdgekitError, match="TensorRT is not installed here"):
        check_engine_manifest(engine, {**DEVICE, "tensorrt_version": None})


def test_manifest_compute_capability_mismatch(engine):
    with pytest.raises(EdgekitError, match=r"model\.engine: .*compute capability 8\.7.*compute capability 8\.9"):
        check_engine_manifest(engine, {**DEVICE, "compute_capability": "8.9"})


def test_manifest_tampered_engine(engine):
    engine.write_bytes(b"plan bytes, patched")
    with pytest.raises(EdgekitError, match=r"model\.engine: engine bytes changed since the build"):
        check_engine_manifest(engine, DEVICE)


def test_manifest_missing(engine):
    manifest_path(engine).unlink()
    with pytest.raises(EdgekitError, match=r"model\.engine: engine manifest model\.engine\.json is missing"):
        check_engine_manifest(engine, DEVICE)
    manifest_path(engine).write_text("{not json")
    with pytest.raises(EdgekitError, match="not valid JSON"):
        check_engine_manifest(engine, DEVICE)


# ---------------------------------------------------------------------------------------- build without TensorRT


def test_build_engine_without_tensorrt_is_a_clear_error(tmp_path, monkeypatch):
    if _has_tensorrt():
        pytest.skip("TensorRT is installed here")
    monkeypatch.setattr("edgekit.backends.tensorrt.engine.shutil.which", lambda name: None)
    src = tmp_path / "m.onnx"
    onnx.save(_qdq_conv(), src)
    with pytest.raises(EdgekitError, match="TensorRT is not installed"):
        build_engine(src, tmp_path / "m.engine", {"precision": "int8"})
    assert not (tmp_path / "m.engine").exists() and not manifest_path(tmp_path / "m.engine").exists()


def test_build_engine_uses_trtexec_from_path(tmp_path, monkeypatch):
    """Without the Python module, build_engine runs trtexec (here a stand-in that writes a plan and prints the banner)."""
    if _has_tensorrt():
        pytest.skip("TensorRT is installed here: the Python API path is used")
    path = stand_in_trtexec(
        tmp_path / "bin",
        "import sys\n"
        "print('&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec ' + ' '.join(sys.argv[1:]))\n"
        "args = dict(a.split('=', 1) for a in sys.argv[1:] if '=' in a)\n"
        "open(args['--saveEngine'], 'wb').write(b'fake plan')\n",
    )
    monkeypatch.setenv("PATH", path)
    src, dst = tmp_path / "m.onnx", tmp_path / "out" / "m.engine"
    onnx.save(_qdq_conv(), src)
    build_engine(src, dst, {"precision": "int8", "workspace_mb": 512})
    assert dst.read_bytes() == b"fake plan"
    manifest = json.loads(manifest_path(dst).read_text())
    assert manifest["builder"] == "trtexec" and manifest["tensorrt_version"] == "10.3.0"
    assert manifest["trtexec_command"] == ["trtexec", f"--onnx={src}", f"--saveEngine={dst}", "--skipInference", "--stronglyTyped", "--memPoolSize=workspace:512M"]
    check_engine_manifest(dst, {"tensorrt_version": "10.3.0", "compute_capability": None})
    assert not list(dst.parent.glob("*.partial"))


def test_trtexec_failure_is_a_clear_error(tmp_path, monkeypatch):
    if _has_tensorrt():
        pytest.skip("TensorRT is installed here")
    monkeypatch.setenv("PATH", stand_in_trtexec(tmp_path / "bin", "import sys\nprint('[E] Error[4]: ITensor::getDimensions: bad input')\nsys.exit(1)\n"))
    src, dst = tmp_path / "m.onnx", tmp_path / "m.engine"
    onnx.save(_qdq_conv(), src)
    with pytest.raises(EdgekitError, match="trtexec failed with exit code 1.*bad input"):
        build_engine(src, dst, {"precision": "int8"})
    assert not dst.exists() and not list(tmp_path.glob("*.partial"))


def test_runner_without_tensorrt_is_a_clear_error(engine):
    if _has_tensorrt():
        pytest.skip("TensorRT is installed here")
    from edgekit.backends.tensorrt.runner import TensorRTRunner

    with pytest.raises(EdgekitError, match="TensorRT is not installed"):
        TensorRTRunner(engine).load()


# ------------------------------------------------------------------------------------ on a GPU with TensorRT


def _tiny_conv_onnx(path, qdq: bool) -> onnx.ModelProto:
    from edgekit.backends.tensorrt.qdq import insert_qdq_for_tensorrt
    from edgekit.quantization.spec import Range

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 16, 16])], [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if qdq:
        model = insert_qdq_for_tensorrt(model, build_tensorrt_spec(model, {"x": Range(-4.0, 4.0)}, []))
    onnx.save(model, path)
    return model


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_build_and_run_engine_on_gpu(tmp_path, precision):
    pytest.importorskip("tensorrt", reason=NEEDS_TRT)
    pytest.importorskip("cuda", reason=NEEDS_TRT)
    from edgekit.backends.tensorrt.engine import current_device_info
    from edgekit.backends.tensorrt.runner import TensorRTRunner

    src, dst = tmp_path / "m.onnx", tmp_path / "m.engine"
    model = _tiny_conv_onnx(src, qdq=precision == "int8")
    config = {"precision": precision, "dynamic_batch": {"min": 1, "opt": 2, "max": 4}, "timing_cache": str(tmp_path / "cache.bin")}
    build_engine(src, dst, config)
    check_engine_manifest(dst, current_device_info())
    assert (tmp_path / "cache.bin").stat().st_size > 0
    x = np.random.default_rng(1).uniform(-4, 4, size=(3, 3, 16, 16)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with TensorRTRunner(dst) as runner:
        assert [m.name for m in runner.inputs] == ["x"] and runner.inputs[0].shape[0] is None
        out = runner.infer({"x": x})["y"]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


# ------------------------------------------------------------- runner logic against stand-in tensorrt/cuda modules


def _fake_tensorrt_modules(monkeypatch):
    """Minimal stand-ins for ``tensorrt`` and ``cuda.bindings.runtime`` (host memory as "device" memory).

    They check the runner's own logic (manifest first, shapes, buffers, copies, the I/O-tensor call sequence), not
    TensorRT: the real API is exercised only by the GPU tests above.
    """
    import ctypes
    import types

    memory: dict[int, ctypes.Array] = {}
    calls: list[str] = []

    class Err(int):
        pass

    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def malloc(n):
        buf = ctypes.create_string_buffer(n)
        memory[ctypes.addressof(buf)] = buf
        return Err(0), ctypes.addressof(buf)

    rt.cudaMalloc = malloc
    rt.cudaFree = lambda p: (memory.pop(int(p)), (Err(0),))[1]
    rt.cudaMemcpyAsync = lambda dst, src, n, kind, stream: (ctypes.memmove(int(dst), int(src), n), (Err(0),))[1]
    rt.cudaStreamCreate = lambda: (Err(0), 7)
    rt.cudaStreamSynchronize = lambda s: (Err(0),)
    rt.cudaStreamDestroy = lambda s: (Err(0),)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.nptype = lambda dt: np.float32

    class Context:
        def __init__(self):
            self.shapes, self.addr = {}, {}

        def set_input_shape(self, name, shape):
            calls.append(f"set_input_shape {name} {shape}")
            self.shapes[name] = shape
            return shape[0] <= 4

        def get_tensor_shape(self, name):
            return self.shapes["x"]

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            calls.append(f"execute_async_v3 {stream}")
            n = int(np.prod(self.shapes["x"]))
            x = np.frombuffer(memory[self.addr["x"]], np.float32, n)
            y = np.frombuffer(memory[self.addr["y"]], np.float32, n)
            y[:] = np.maximum(x, 0)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["x", "y"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "x" else "out"

        def get_tensor_shape(self, name):
            return (-1, 3, 4, 4)

        def get_tensor_dtype(self, name):
            return "float"

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            calls.append(f"deserialize {data!r}")
            return Engine()

    trt.Runtime = Runtime
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    return calls, memory


def test_runner_logic_with_stand_in_modules(engine, monkeypatch):
    if _has_tensorrt():
        pytest.skip("real TensorRT installed: see test_build_and_run_engine_on_gpu")
    from edgekit.backends.tensorrt.runner import TensorRTRunner

    calls, memory = _fake_tensorrt_modules(monkeypatch)
    with pytest.raises(EdgekitError, match="compute capability 8.7"):  # the manifest is checked before deserializing
        TensorRTRunner(engine, device_info={**DEVICE, "compute_capability": "7.2"}).load()
    assert not calls
    with TensorRTRunner(engine, device_info=DEVICE) as runner:
        assert [(m.name, m.shape) for m in runner.inputs] == [("x", (None, 3, 4, 4))]
        assert [m.name for m in runner.outputs] == ["y"]
        for batch in (2, 1, 3):  # buffers are reused, and grown when the batch grows
            x = np.random.default_rng(batch).normal(size=(batch, 3, 4, 4)).astype(np.float32)
            out = runner.infer({"x": x})
            assert out["y"].shape == x.shape and np.array_equal(out["y"], np.maximum(x, 0))
        with pytest.raises(EdgekitError, match="outside the engine's profile"):
            runner.infer({"x": np.zeros((5, 3, 4, 4), np.float32)})
        with pytest.raises(EdgekitError, match=r"missing \['x'\]"):
            runner.infer({"images": np.zeros((1, 3, 4, 4), np.float32)})
    assert calls[0] == "deserialize b'plan bytes'" and "execute_async_v3 7" in calls
    assert not memory  # close() freed every device buffer


@pytest.mark.parametrize(("axis", "expect"), [(0, {}), (1, {"weight-axis": ["w_Q", "w_DQ"]})])
def test_lint_qat_form_float_weight_q_dq(axis, expect):
    """QAT exports quantize float weights in the graph (Q -> DQ -> Conv): the weight rules apply to both nodes."""
    w = np.random.default_rng(0).normal(size=(4, 4, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(4, 0.02, np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_z")]
    nodes = [helper.make_node("QuantizeLinear", ["w", "w_s", "w_z"], ["w_q"], name="w_Q", axis=axis),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dq"], name="w_DQ", axis=axis),
             helper.make_node("Conv", ["x", "w_dq"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    assert _rules(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])) == expect
