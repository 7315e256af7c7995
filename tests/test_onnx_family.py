"""The ``onnx`` family: a user's ONNX model with an image input, imported (not exported), through the one job.

A small CNN made here with torch (BatchNormalization kept in the file, so edgekit's passes fold it), and the real
architectures ONNX ships as backend test data (``onnx/backend/test/data/light``: ResNet-50, DenseNet-121, Inception
v1/v2, SqueezeNet, ShuffleNet), whose "light" files carry no weights (every weight is a ``ConstantOfShape`` of 0.02):
they get seeded random weights here, kept at opset 9 / IR 4 so the job's import converts them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from conftest import ASSETS, COCO, REPO
from contracts.models import small_cnn_onnx

from edgekit.errors import EdgekitError
from edgekit.families.onnx import ImageInput, OnnxSpec, class_scores, fidelity
from edgekit.job import run_recipe
from edgekit.recipe import load_recipe

IMAGENET = ASSETS / "imagenet_sample_1000" / "images"
CALIB = COCO / "calib_images"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
IMAGENET_NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def write_recipe(tmp_path: Path, model: Path, targets: list[str], calibration: int = 16, images: int = 8, **top) -> Path:
    data = {
        "name": model.stem,
        "model": {"family": "onnx", "weights": str(model)},
        "quantization": {"calibration": {"images": str(CALIB), "count": calibration, "warn_below": min(calibration, 8)}},
        "onnx": {**IMAGENET_NORM, "scale": "1/255", "images": str(IMAGENET), "max_images": images},
        "targets": targets,
        "benchmark": {"warmup": 3, "runs": 5, "threads": 2},
        "budgets": {"output_cosine": {"max_drop": 0.02}, "max_abs_error": {"max_value": 1.0}},
    }
    data.update(top)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(recipe: Path, out: Path):
    return run_recipe(load_recipe(recipe), recipe, out)


# ------------------------------------------------------------------------------------------------ section and parts


def test_section_parses_sizes_and_fractions():
    assert OnnxSpec(size="224x160").size == (224, 160)
    assert OnnxSpec(size=96).size == (96, 96)
    assert OnnxSpec(scale="1/255").scale == pytest.approx(1 / 255)
    with pytest.raises(ValueError, match="HxW"):
        OnnxSpec(size="224 by 224")
    with pytest.raises(ValueError, match="unknown|extra"):
        OnnxSpec(sizes=224)


def test_recipe_checks(tmp_path, monkeypatch):
    model = small_cnn_onnx(tmp_path / "cnn.onnx")
    with pytest.raises(EdgekitError, match="no such file"):
        load_recipe(write_recipe(tmp_path, tmp_path / "missing.onnx", ["onnxruntime:fp32"]))
    with pytest.raises(EdgekitError, match="environment variable"):
        monkeypatch.delenv("EDGEKIT_ONNX_MODEL", raising=False)
        load_recipe(write_recipe(tmp_path, Path("${EDGEKIT_ONNX_MODEL}"), ["onnxruntime:fp32"]))
    with pytest.raises(EdgekitError, match=r"\.onnx file"):
        load_recipe(write_recipe(tmp_path, ASSETS / "yolo" / "yolov5n.safetensors", ["onnxruntime:fp32"]))
    evaluation = {"dataset": {"images": str(IMAGENET), "annotations": str(COCO / "annotations" / "instances_val2017_subset.json")}}
    with pytest.raises(EdgekitError, match="not `evaluation`"):
        load_recipe(write_recipe(tmp_path, model, ["onnxruntime:fp32"], evaluation=evaluation))
    recipe = load_recipe(write_recipe(tmp_path, model, ["onnxruntime:fp32"], onnx=None))
    assert recipe.onnx == OnnxSpec()  # the section is optional: defaults (random fidelity inputs)


def test_preprocessing_follows_the_section(tmp_path):
    model = onnx.load(small_cnn_onnx(tmp_path / "cnn.onnx"))
    image = sorted(IMAGENET.iterdir())[0]
    rgb = ImageInput(model, OnnxSpec(scale=1.0), tmp_path)
    assert rgb.name == "image" and rgb.size == (64, 64) and rgb.output_names == ("logits",)
    x = rgb.image_feed(image)["image"]
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32 and x.max() > 1
    bgr = ImageInput(model, OnnxSpec(scale=1.0, color="BGR"), tmp_path).image_feed(image)["image"]
    np.testing.assert_array_equal(bgr[0, ::-1], x[0])
    norm = ImageInput(model, OnnxSpec(**IMAGENET_NORM), tmp_path).image_feed(image)["image"]
    np.testing.assert_allclose(norm[0, 0], (x[0, 0] / 255 - 0.485) / 0.229, rtol=1e-5, atol=1e-5)
    boxed = ImageInput(model, OnnxSpec(scale=1.0, fit="letterbox"), tmp_path).pixels(image)  # 500x375 landscape: padded rows
    assert boxed.shape == (64, 64, 3) and (boxed[0] == 114).all() and (boxed[32] != 114).any()
    with pytest.raises(EdgekitError, match="differs from the model's static input"):
        ImageInput(model, OnnxSpec(size=96), tmp_path)
    with pytest.raises(EdgekitError, match="channels"):
        ImageInput(model, OnnxSpec(layout="NHWC"), tmp_path)


def test_fidelity_reads_class_scores():
    rng = np.random.default_rng(0)
    ref = [{"logits": rng.standard_normal((1, 16, 1, 1)).astype(np.float32)} for _ in range(4)]
    assert class_scores(ref[0]["logits"]).shape == (1, 16)
    assert class_scores(np.zeros((1, 4))) is None and class_scores(np.zeros((1, 3, 8, 8))) is None
    same = fidelity(ref, ref)
    assert same["output_cosine"] == pytest.approx(1.0) and same["max_abs_error"] == 0 and same["top1_agreement"] == 1.0
    flipped = fidelity(ref, [{"logits": -r["logits"]} for r in ref])
    assert flipped["output_cosine"] == pytest.approx(-1.0) and flipped["top1_agreement"] == 0.0
    boxes = fidelity([{"boxes": np.ones((1, 4))}], [{"boxes": np.ones((1, 4)) * 2}])
    assert "top1_agreement" not in boxes and boxes["max_abs_error"] == 1.0


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_small_cnn_every_target(tmp_path):
    model = small_cnn_onnx(tmp_path / "cnn.onnx")
    targets = ["onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32", "openvino:int8", "tensorrt:int8", "tflite:fp32"]
    out = tmp_path / "out"
    report = run(write_recipe(tmp_path, model, targets), out)
    v = {x.name: x for x in report.variants}
    assert report.reference == "onnxruntime:fp32"
    for name in ("onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32", "openvino:int8"):
        assert v[name].status == "measured", (name, v[name].not_built_reason)
        assert v[name].latency_ms is not None and v[name].latency_ms.median > 0
    trt = v["tensorrt:int8"]  # no TensorRT here: its Q/DQ graph's accuracy, run on the CPU as written
    assert trt.status == "simulated" and "TensorRT" in trt.not_built_reason and trt.latency_ms is None
    assert trt.metrics["output_cosine"] > 0.98, trt.metrics
    assert v["tflite:fp32"].status == "not_built" and "needs a PyTorch module" in v["tflite:fp32"].not_built_reason
    for name in ("onnxruntime:int8", "openvino:int8"):
        assert v[name].metrics["output_cosine"] > 0.98, (name, v[name].metrics)
        assert v[name].fidelity["output_cosine_min"] > 0.95 and "top1_agreement" in v[name].metrics
        assert v[name].manifest["settings"]["quantization"] is not None
    assert v["openvino:fp32"].metrics["output_cosine"] > 0.99999
    # budgets: evaluated against the reference for every measured variant, both kinds (drop and ceiling)
    for name in ("onnxruntime:int8", "openvino:fp32", "openvino:int8", "tensorrt:int8"):  # the simulation is gated too
        verdicts = {b.metric: b for b in v[name].budget}
        assert set(verdicts) == {"output_cosine", "max_abs_error"} and all(b.passed for b in verdicts.values()), verdicts
    # import: recorded, passes run (BatchNormalization folded) and verified, no PyTorch check
    settings = v["onnxruntime:int8"].manifest["settings"]
    check = settings["export"]["check"]
    assert check["imported"] and check["source"] == str(model) and v["onnxruntime:int8"].manifest["inputs"][str(model)] == check["sha256"]
    assert settings["passes"]["verified"]["feeds"] == 4
    assert "BatchNormalization" in {n.op_type for n in onnx.load(out / "model_fp32_raw.onnx").graph.node}
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(out / "model_fp32.onnx").graph.node}
    assert settings["onnx"]["input"] == {"name": "image", "shape": [1, 3, 64, 64], "dtype": "float32", "size": [64, 64]}
    # TensorRT: not built here, but its Q/DQ ONNX and build plan are written and lint clean
    trt = v["tensorrt:int8"].manifest["settings"]["backend"]
    assert trt["lint"] == {"issues": [], "passed": True}
    assert (out / "tensorrt" / "model_int8_qdq.onnx").is_file() and (out / "tensorrt" / "build_int8.json").is_file()
    assert json.loads((out / "report.json").read_text())["reference"] == "onnxruntime:fp32"


def test_no_images_means_random_inputs_noted(tmp_path):
    model = small_cnn_onnx(tmp_path / "cnn.onnx")
    recipe = write_recipe(tmp_path, model, ["onnxruntime:fp32", "onnxruntime:int8"], calibration=8, onnx={"scale": "1/255", "max_images": 3},
                          benchmark={"warmup": 1, "runs": 2})
    int8 = run(recipe, tmp_path / "out").variant("onnxruntime:int8")
    assert int8.status == "measured" and int8.fidelity["output_cosine_min"] > 0.9
    assert any("3 random images" in n for n in int8.notes)


def test_keep_float_patterns_resolve_to_node_names(tmp_path):
    """``keep_float.nodes`` patterns become the fused graph's exact node names (what NNCF's ignored scope needs);
    ``keep_float.op_types`` nodes join the scope of backends with their own quantizer (NNCF takes no op types)."""
    from edgekit.job import Job

    recipe_path = write_recipe(tmp_path, small_cnn_onnx(tmp_path / "cnn.onnx"), ["onnxruntime:fp32", "onnxruntime:int8"], calibration=8, images=2)
    recipe = load_recipe(recipe_path)
    recipe.quantization.keep_float.nodes = ["/6/*", "/99/*"]  # /99/: matches nothing (a yellow line, not an error)
    recipe.quantization.keep_float.op_types = ["Gemm"]
    stage = tmp_path / "stage"
    stage.mkdir()
    job = Job(recipe, recipe_path, stage)
    job.family.load()
    (spec,) = job.family.graphs()
    graph = job.export(spec)
    job.prepare(graph)
    assert graph.float_nodes == ["/6/Conv"]  # in the fused graph /7/BatchNormalization is folded into /6/Conv
    assert graph.backend_float_nodes == ["/6/Conv", "/11/Gemm"] and graph.float_ops == ["Gemm"]
    assert len(graph.calibration) == 8 and graph.torch is None


# ------------------------------------------------------------------------------------------------ ONNX's architectures


def randomized(name: str, path: Path, seed: int = 0) -> Path:
    """``light_<name>.onnx`` with seeded random weights in place of its ``ConstantOfShape`` placeholders (He-normal
    conv/FC weights, near-identity BatchNorm and scale layers, small biases) and, where a Softmax ends the graph, a
    scalar temperature that keeps its logits at std ~3 (else the probabilities saturate to one-hot and fidelity says
    nothing). Kept at its opset (9) with IR 4: the job's import converts it."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(LIGHT / f"light_{name}.onnx")
    g, rng = model.graph, np.random.default_rng(seed)
    shapes = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consumer = {i: (n, k) for n in g.node for k, i in enumerate(n.input)}
    kept, weights = [], []
    for node in g.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        user, slot = consumer[node.output[0]]
        if user.op_type in ("Conv", "Gemm") and slot == 1:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / int(np.prod(shape[1:])))
        elif user.op_type == "BatchNormalization":
            value = {1: 1 + 0.1 * rng.standard_normal(shape), 2: 0.1 * rng.standard_normal(shape), 3: 0.1 * rng.standard_normal(shape),
                     4: 1 + 0.1 * rng.random(shape)}[slot]
        elif user.op_type == "Mul":
            value = 1 + 0.1 * rng.standard_normal(shape)
        else:
            value = 0.05 * rng.standard_normal(shape)
        weights.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
    del g.node[:]
    g.node.extend(kept)
    used = {i for n in g.node for i in n.input}
    placeholders = {i.name for i in g.initializer} - used
    rest = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(rest + weights)
    inputs = [i for i in g.input if i.name not in placeholders]  # the remaining initializer inputs stay (the import drops them)
    del g.input[:]
    g.input.extend(inputs)
    model.ir_version = 4
    softmax = [n for n in g.node if n.op_type == "Softmax"]
    if softmax:
        logits = softmax[-1].input[0]
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(onnx.ValueInfoProto(name=logits))
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
        spread = float(session.run([logits], {session.get_inputs()[0].name: x})[0].std())
        g.initializer.append(numpy_helper.from_array(np.array(3.0 / spread, np.float32), "edgekit_test_temperature"))
        softmax[-1].input[0] = logits + "_tempered"
        g.node.insert(list(g.node).index(softmax[-1]), helper.make_node("Mul", [logits, "edgekit_test_temperature"], [logits + "_tempered"], name="temperature"))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


ARCHITECTURES = [name for name in ("resnet50", "densenet121", "inception_v1", "inception_v2", "squeezenet", "shufflenet")
                 if (LIGHT / f"light_{name}.onnx").is_file()]
# the floor each architecture's int8 output cosine clears: measured 0.9992-0.99998 (4 images, 8 calibration images)
COSINE_FLOOR = 0.995


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_onnx_backend_architectures(tmp_path, name):
    model = randomized(name, tmp_path / f"{name}.onnx")
    assert onnx.load(model).opset_import[0].version == 9
    targets = ["onnxruntime:fp32", "onnxruntime:int8"] + (["openvino:int8"] if name == "squeezenet" else [])
    recipe = write_recipe(tmp_path, model, targets, calibration=8, images=4, benchmark={"warmup": 1, "runs": 3, "threads": 2},
                          budgets={"output_cosine": {"max_drop": 0.01}})
    out = tmp_path / "out"
    report = run(recipe, out)
    assert all(v.status == "measured" for v in report.variants), [(v.name, v.not_built_reason) for v in report.variants]
    settings = report.variant("onnxruntime:int8").manifest["settings"]
    assert settings["export"]["check"]["source_opset"] == 9 and settings["export"]["check"]["opset"] == 17
    assert {o.version for o in onnx.load(out / "model_fp32_raw.onnx").opset_import if o.domain == ""} == {17}
    passes = settings["passes"]
    assert passes["verified"]["feeds"] == 4 and passes["verified"]["max_error_ratio"] <= passes["verified"]["tolerance"]
    assert [p["name"] for p in passes["applied"]] == ["constant_folding", "fuse_conv_bn", "eliminate_identity", "remove_unused"]
    fp32 = onnx.load(out / "model_fp32.onnx")
    producer = {o: n.op_type for n in fp32.graph.node for o in n.output}
    assert not [n.name for n in fp32.graph.node if n.op_type == "BatchNormalization" and producer.get(n.input[0]) == "Conv"]  # folded
    assert [i.name for i in fp32.graph.input] == [settings["onnx"]["input"]["name"]]  # the import dropped initializer inputs
    for v in report.variants[1:]:
        assert v.metrics["output_cosine"] > COSINE_FLOOR and v.fidelity["output_cosine_min"] > COSINE_FLOOR - 0.01, (v.name, v.metrics)
        assert "top1_agreement" in v.metrics and all(b.passed for b in v.budget), v.budget


def test_recipe_file_loads(monkeypatch, tmp_path):
    """recipes/onnx_resnet.yaml, with its model variable set to the randomized ResNet-50 (as its comment says)."""
    monkeypatch.setenv("EDGEKIT_ONNX_MODEL", str(randomized("resnet50", tmp_path / "resnet50.onnx")))
    recipe = load_recipe(REPO / "recipes" / "onnx_resnet.yaml")
    assert recipe.model.family == "onnx" and Path(recipe.model.weights).is_file()
    assert [t.name for t in recipe.targets] == ["onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32", "openvino:int8", "tensorrt:int8", "tflite:fp32"]
    assert Path(recipe.onnx.images).is_dir() and Path(recipe.quantization.calibration.images).is_dir()
    assert "output_cosine" in recipe.budgets
