"""Every edge target from one recipe: OpenVINO, LiteRT and TensorRT builders behind the runner contract.

Real YOLOv5n weights, real COCO images, real OpenVINO/LiteRT sessions. TensorRT cannot run here: its targets
are checked for what is verifiable without it (Q/DQ lint, build config, trtexec command, "not built" report).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import REPO

from edgekit.backends import Graph, Run
from edgekit.errors import EdgekitError
from edgekit.recipe import Recipe, load_recipe

pytest.importorskip("openvino", reason='openvino is not installed (pip install -e ".[openvino]")')
pytest.importorskip("ai_edge_litert", reason='ai-edge-litert is not installed (pip install -e ".[tflite]")')


def _recipe(tmp_path: Path, targets: list, **top) -> Path:
    data = yaml.safe_load((REPO / "recipes" / "yolov5n.yaml").read_text())
    data["targets"] = targets
    data.update(top)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------------------------------- recipe


# Precisions are the registry backend's (Target validates them after parsing), so an error names the target item
# (``targets.0``) with the backend's own explanation, where the Literal fields used to give ``targets.0.precision``.
@pytest.mark.parametrize(
    ("targets", "messages"),
    [
        (["onnxruntime:bf16"], ("onnxruntime has no precision 'bf16'",)),
        (["tflite:int3"], ("'targets.0'", "tflite has no precision 'int3'")),
        (["tflite:int4"], ("tflite has no precision 'int4'",)),  # int4 exists, for onnxruntime vlm decoders only
        (["coreml:fp32"], ("'targets.0'", "unknown backend 'coreml'")),
        ([{"backend": "coreml", "precision": "fp32"}], ("'targets.0'", "unknown backend 'coreml'")),
        (["tflite:int8", "tflite:int8"], ("target listed twice",)),
        ([{"backend": "tflite", "precision": "int8", "accuracy_control": True}], ("accuracy_control applies to openvino:int8 only",)),
    ],
)
def test_bad_targets_name_the_key_and_the_file(tmp_path, targets, messages):
    path = _recipe(tmp_path, targets)
    with pytest.raises(EdgekitError) as err:
        load_recipe(path)
    assert all(m in str(err.value) for m in messages) and "recipe.yaml" in str(err.value), str(err.value)


def test_every_backend_precision_parses(tmp_path):
    targets = ["onnxruntime:fp32", "openvino:bf16", "openvino:fp16", "tflite:fp16", "tflite:dynamic", "tensorrt:fp16", "tensorrt:int8",
               {"backend": "openvino", "precision": "int8", "accuracy_control": True}]
    recipe = load_recipe(_recipe(tmp_path, targets))
    assert [t.name for t in recipe.targets][-1] == "openvino:int8+ac"
    assert len(recipe.targets) == len(targets)


# ------------------------------------------------------------------------------------------------------ TensorRT


def _trt_build(tmp_path: Path, precision: str, fp32_onnx: Path, **changes):
    """One ``tensorrt:<precision>`` build of the YOLOv5n graph, as the job calls the backend (a ``Graph`` + ``Run``)."""
    from edgekit import progress, registry

    data = yaml.safe_load((REPO / "recipes" / "yolov5n.yaml").read_text())
    data["targets"] = [f"tensorrt:{precision}"]
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        data.setdefault(section, {})[leaf] = value
    recipe = Recipe.model_validate(data)
    target = recipe.targets[0]
    backend = registry.backend(target.backend)
    assert backend.available() is None  # TensorRT targets always build their ONNX, plan and command
    return backend.build(Graph("model", fp32_onnx), target, Run(recipe, tmp_path, progress.track))


def test_tensorrt_fp16_writes_plan_and_trtexec_command_without_tensorrt(tmp_path, fp32_onnx):
    built = _trt_build(tmp_path, "fp16", fp32_onnx, tensorrt__dla_core=0, tensorrt__timing_cache="trt.cache", tensorrt__workspace_mb=512)
    assert not built.built and "TensorRT is not installed" in built.not_built
    plan = json.loads((tmp_path / "tensorrt" / "build_fp16.json").read_text())
    argv = shlex.split(plan["trtexec"])
    assert argv[:4] == ["trtexec", "--onnx=tensorrt/model_fp32.onnx", "--saveEngine=tensorrt/model_fp16.engine", "--skipInference"]
    assert {"--fp16", "--memPoolSize=workspace:512M", "--useDLACore=0", "--allowGPUFallback", "--timingCacheFile=trt.cache"} <= set(argv)
    assert plan["config"]["dla_core"] == 0 and plan["config"]["gpu_fallback"] is True
    assert (tmp_path / "tensorrt" / "model_fp32.onnx").read_bytes() == fp32_onnx.read_bytes()


def test_tensorrt_dynamic_batch_profile_from_recipe(tmp_path, yolo):
    import torch

    from edgekit.export import export_onnx

    family, model = yolo
    dyn = export_onnx(model, torch.zeros(1, 3, 640, 640), tmp_path / "dyn.onnx", dynamic_batch=True)
    built = _trt_build(tmp_path, "fp16", dyn, export__dynamic_batch=True, tensorrt__max_batch=8, tensorrt__build="never")
    assert built.not_built.startswith("tensorrt.build is 'never'")
    argv = shlex.split(built.settings["trtexec"])
    assert "--minShapes=images:1x3x640x640" in argv and "--optShapes=images:1x3x640x640" in argv and "--maxShapes=images:8x3x640x640" in argv


def test_tensorrt_max_batch_needs_dynamic_export(tmp_path):
    path = _recipe(tmp_path, ["tensorrt:fp16"], tensorrt={"max_batch": 4})
    with pytest.raises(EdgekitError, match="dynamic_batch"):
        load_recipe(path)


# --------------------------------------------------------------------------------------------------------- LiteRT


@pytest.fixture(scope="module")
def tflite_fp32(fp32_onnx, tmp_path_factory) -> Path:
    """The FP32 ``.tflite`` converted from the PyTorch module the YOLO family gives LiteRT (BN folded, boxes and scores split)."""
    from edgekit.backends.litert.builder import convert
    from edgekit.job import Job

    tmp = tmp_path_factory.mktemp("tflite")
    path = _recipe(tmp, ["tflite:fp32"])
    job = Job(load_recipe(path), path, tmp)
    job.family.load()
    graph = Graph("model", fp32_onnx, torch=job.family.torch_source("model"))
    out = tmp / "model_fp32.tflite"
    settings = convert(graph, out, job.recipe.model.batch)
    assert settings["layout"] == "NHWC" and settings["outputs"] == ["boxes", "scores"] and settings["input_shapes"] == {"images": [1, 640, 640, 3]}
    return out


def test_litert_fp32_matches_onnxruntime_on_real_images(tflite_fp32, fp32_onnx, yolo, eval_images):
    from edgekit.backends.litert.runner import LiteRTRunner
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    family, _ = yolo
    with LiteRTRunner(tflite_fp32, threads=2, input_names=["images"], output_names=["boxes", "scores"]) as tfl, OnnxRuntimeRunner(fp32_onnx, threads=2) as ort:
        assert tfl.inputs[0].shape == (1, 3, 640, 640)  # the contract is NCHW; the model itself is NHWC
        assert tfl.interpreter.get_input_details()[0]["shape"].tolist() == [1, 640, 640, 3]
        assert [o.name for o in tfl.outputs] == ["boxes", "scores"] and tfl.outputs[0].shape == (1, 25200, 4)
        for path in eval_images[:2]:
            feed = family.preprocess(path)[0]
            got = family.join_outputs(tfl.infer(feed))["output0"]
            want = ort.infer(feed)["output0"]
            assert got.shape == want.shape
            assert np.abs(got[..., 4:] - want[..., 4:]).max() < 1e-3  # probabilities
            assert np.abs(got[..., :4] - want[..., :4]).max() < 0.05  # pixels (0-640)


def test_shared_ranges_map_onto_tflite_tensors(tflite_fp32, fp32_onnx, yolo, calib_images):
    from edgekit.backends.litert.ranges import apply_shared_ranges, match_tensors
    from edgekit.quantization.calibration import collect_ranges
    from edgekit.quantization.placement import ORT_PLACEMENT, quantized_nodes, tensors_to_quantize

    family, _ = yolo
    model = onnx.load(str(fp32_onnx))
    tensors = tensors_to_quantize(model, quantized_nodes(model, ORT_PLACEMENT, family.float_nodes(model), []))
    ranges = collect_ranges(model, tensors, calib_images[:4], lambda p: family.preprocess(p)[0], "minmax", use_cache=False).ranges
    matches = match_tensors(tflite_fp32, model, tensors, family.preprocess(calib_images[0])[0])
    assert len(set(matches.values())) >= 0.8 * len(tensors)  # measured: 197 TFLite tensors for 186 ONNX ones
    qsvs = {t: {"min": np.zeros(1, np.float32), "max": np.ones(1, np.float32)} for t in matches}
    assert apply_shared_ranges(qsvs, matches, ranges) == len(matches)
    for tname, oname in matches.items():
        assert qsvs[tname]["min"][0] == np.float32(ranges[oname].low) and qsvs[tname]["max"][0] == np.float32(ranges[oname].high)


def test_litert_runner_errors_name_the_file(tmp_path):
    from edgekit.backends.litert.runner import LiteRTRunner

    with pytest.raises(EdgekitError, match="LiteRT model not found"):
        LiteRTRunner(tmp_path / "missing.tflite").load()
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(EdgekitError) as err:
        LiteRTRunner(bad).load()
    assert "bad.tflite" in str(err.value)


# ------------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def edge_run(tmp_path_factory) -> Path:
    from test_cli import edgekit

    tmp = tmp_path_factory.mktemp("edge")
    data = yaml.safe_load((REPO / "recipes" / "yolov5n_edge.yaml").read_text())
    data["targets"] = ["onnxruntime:fp32", "onnxruntime:int8", "openvino:int8", "tflite:fp16", "tflite:int8", "tensorrt:fp16", "tensorrt:int8"]
    data["quantization"]["calibration"]["count"] = 48
    data["evaluation"]["max_images"] = 30
    data["benchmark"] = {"warmup": 1, "runs": 3, "threads": 2}
    data["budgets"] = {"mAP50-95": {"max_drop": 0.02}}  # 48 calibration / 30 evaluation images: a loose, quick gate
    recipe = tmp / "edge.yaml"
    recipe.write_text(yaml.safe_dump(data))
    out = tmp / "run"
    result = edgekit("export", recipe, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_every_target_measured_side_by_side(edge_run):
    report = json.loads((edge_run / "report.json").read_text())
    variants = {v["name"]: v for v in report["variants"]}
    assert list(variants) == ["onnxruntime:fp32", "onnxruntime:int8", "openvino:int8", "tflite:fp16", "tflite:int8", "tensorrt:fp16", "tensorrt:int8"]
    ref = variants["onnxruntime:fp32"]["metrics"]["mAP50-95"]
    assert ref > 0.25
    for name in ["tflite:fp16", "onnxruntime:int8", "openvino:int8", "tflite:int8"]:
        v = variants[name]
        assert v["status"] == "measured" and v["latency_ms"]["median"] > 0
        assert ref - v["metrics"]["mAP50-95"] < 0.02, (name, v["metrics"])
        assert v["fidelity"] is not None
        for f in v["files"]:
            assert (edge_run / f).is_file(), f
    assert abs(variants["tflite:fp16"]["metrics"]["mAP50-95"] - ref) < 0.003  # fp16 weights barely move accuracy
    ov = variants["openvino:int8"]["manifest"]["settings"]["backend"]["compiled"]
    assert ov["INFERENCE_NUM_THREADS"] == 2 and ov["PERFORMANCE_HINT"] == "LATENCY" and ov["INFERENCE_PRECISION_HINT"] in ("f32", "bf16", "f16")
    assert variants["openvino:int8"]["manifest"]["settings"]["backend"]["nncf"]["head"] == "float (convolutions and decode)"
    tfl = variants["tflite:int8"]["manifest"]["settings"]["backend"]
    assert tfl["interpreter"]["delegate"] == "XNNPACK" and set(tfl["interpreter"]["io_dtypes"]) == {"images", "boxes", "scores"}


def test_tflite_int8_is_integer_with_float_decode(edge_run):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(edge_run / "tflite" / "model_int8.tflite"))
    it.allocate_tensors()
    dtypes = {d["index"]: np.dtype(d["dtype"]).name for d in it.get_tensor_details()}
    ops = it._get_ops_details()
    convs = [op for op in ops if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert convs and all(dtypes[op["outputs"][0]] == "int8" for op in convs)  # every conv runs in int8, head convs included
    concat_out = [dtypes[op["outputs"][0]] for op in ops if op["op_name"] == "CONCATENATION"][-1]
    assert concat_out == "float32"  # the decode (pixels next to probabilities) stays float


def test_tensorrt_targets_simulated_on_cpu_with_clean_qdq(edge_run):
    """No TensorRT here: tensorrt:int8's accuracy is its Q/DQ graph run as written (no int8 kernels) and
    tensorrt:fp16's the FP32 graph with fp16 storage emulated; both gated, neither timed, both said so."""
    from edgekit.backends.tensorrt.qdq import lint_qdq_for_tensorrt

    report = json.loads((edge_run / "report.json").read_text())
    variants = {v["name"]: v for v in report["variants"]}
    ref = variants["onnxruntime:fp32"]["metrics"]["mAP50-95"]
    for name in ("tensorrt:int8", "tensorrt:fp16"):
        trt = variants[name]
        assert trt["status"] == "simulated" and "TensorRT is not installed" in trt["not_built_reason"]
        assert "accuracy simulated on CPU" in trt["simulated_how"] and "latency not measured" in trt["simulated_how"]
        assert trt.get("latency_ms") is None and trt["metrics"]["mAP50-95"] > 0.2 and trt["budget"]
        assert trt["fidelity"] is not None
    assert abs(variants["tensorrt:fp16"]["metrics"]["mAP50-95"] - ref) < 0.003  # fp16 storage barely moves accuracy
    assert ref - variants["tensorrt:int8"]["metrics"]["mAP50-95"] < 0.02  # the 8-bit, symmetric, float-bias placement
    assert (edge_run / "tensorrt" / "model_fp16_simulated.onnx").is_file()
    trt = variants["tensorrt:int8"]
    qdq = onnx.load(str(edge_run / "tensorrt" / "model_int8_qdq.onnx"))
    assert lint_qdq_for_tensorrt(qdq) == [] and trt["manifest"]["settings"]["backend"]["lint"]["passed"]
    plan = json.loads((edge_run / "tensorrt" / "build_int8.json").read_text())
    assert "--stronglyTyped" in plan["trtexec"] and "--int8" not in plan["trtexec"]
    md = (edge_run / "report.md").read_text()
    assert "not built" in md and "(simulated, engine not built)" in md


def test_ort_and_tensorrt_specs_share_one_calibration(edge_run):
    ort_spec = json.loads((edge_run / "quant_spec.json").read_text())
    trt_spec = json.loads((edge_run / "tensorrt" / "quant_spec_tensorrt.json").read_text())
    assert ort_spec["settings"]["calibration_key"] == trt_spec["settings"]["calibration_key"]
    assert ort_spec["settings"]["placement"] != trt_spec["settings"]["placement"]
    shared = set(ort_spec["activations"]) & set(trt_spec["activations"])
    assert shared
    for name in shared:  # same tensor, same calibrated range; TensorRT's is symmetric (zero-point 0)
        assert trt_spec["activations"][name]["zero_point"] == 0


def test_check_gates_simulated_tensorrt_targets(edge_run):
    from test_cli import edgekit

    ok = edgekit("check", edge_run / "report.json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "tensorrt:int8: mAP50-95 dropped" in ok.stdout and "tensorrt:int8: accuracy simulated on CPU" in ok.stdout
    assert "SKIPPED" not in ok.stdout
    strict = edgekit("check", edge_run / "report.json", "--require-all")  # a simulated target is gated, not skipped
    assert strict.returncode == 0, strict.stdout + strict.stderr



def test_build_command_without_tensorrt_fails_cleanly(edge_run):
    from test_cli import edgekit

    result = edgekit("build", edge_run, "--precision", "int8", cwd=edge_run)  # cwd has a tensorrt/ folder: not TensorRT
    assert result.returncode == 2 and "TensorRT is not installed" in result.stderr and "Traceback" not in result.stderr
    assert not (edge_run / "tensorrt" / "model_int8.engine").exists()
    missing = edgekit("build", edge_run, "--precision", "fp32")  # the run has int8 and fp16 plans, no fp32 one
    assert missing.returncode == 2 and "no TensorRT build settings" in missing.stderr


def test_build_command_drives_trtexec_and_writes_the_manifest(edge_run, tmp_path):
    """A stand-in ``trtexec`` (it copies the ONNX bytes to --saveEngine and prints TensorRT's banner) checks edgekit's
    side of a trtexec build: the command line, the atomic engine write, the manifest. No TensorRT runs here."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import stand_in_trtexec

    run = tmp_path / "run"
    shutil.copytree(edge_run, run)
    log = tmp_path / "argv.json"
    path = stand_in_trtexec(
        tmp_path / "bin",
        "import json, shutil, sys\n"
        f"json.dump(sys.argv[1:], open({str(log)!r}, 'w'))\n"
        "args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if '=' in a)\n"
        "shutil.copyfile(args['onnx'], args['saveEngine'])\nprint('&&&& RUNNING TensorRT.trtexec [TensorRT v100300]')\n",
    )
    env = dict(os.environ, PATH=path, EDGEKIT_PROGRESS="0")
    result = subprocess.run([sys.executable, "-m", "edgekit.cli", "build", str(run), "--precision", "int8"], capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    argv = json.loads(log.read_text())
    assert "--stronglyTyped" in argv and any(a.startswith("--onnx=") and a.endswith("model_int8_qdq.onnx") for a in argv)
    engine = run / "tensorrt" / "model_int8.engine"
    manifest = json.loads((run / "tensorrt" / "model_int8.engine.json").read_text())
    assert engine.read_bytes() == (run / "tensorrt" / "model_int8_qdq.onnx").read_bytes()
    assert manifest["builder"] == "trtexec" and manifest["tensorrt_version"] == "10.3.0" and manifest["strongly_typed"] is True
    assert manifest["onnx"] == "model_int8_qdq.onnx" and manifest["config"]["precision"] == "int8"
    assert sorted(p.name for p in engine.parent.iterdir() if p.name.startswith(".")) == []  # no staging leftovers
