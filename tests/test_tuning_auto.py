"""`quantization.method: auto`: range candidates from one observation, scored label-free on the tuning images (real
YOLOv5n, real calibration images), the choice and both image sets in the report, and calibration/tuning images
that are evaluation images refused before anything runs."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from xml.etree import ElementTree

import pytest
from conftest import ANNOTATIONS, COCO, edgekit
from faults.tiny import assert_one_line_error, tiny_recipe

from edgekit.job import choose_candidate
from edgekit.quantization.calibration import collect_candidates, collect_ranges, parse_candidate


def test_parse_candidate() -> None:
    assert parse_candidate("percentile:99.999") == ("percentile", 99.999)
    assert parse_candidate("mse") == ("mse", 99.99)
    for bad in ("kl", "percentile:40", "mse:3", "percentile:x"):
        with pytest.raises(ValueError):
            parse_candidate(bad)


def test_a_candidate_replaces_the_default_only_on_evidence() -> None:
    def rows(*folds):
        return [{"candidate": str(i), "score": float(sum(f) / len(f)), "fold_scores": list(f)} for i, f in enumerate(folds)]

    default = (0.90, 0.91, 0.92, 0.93, 0.94)
    noisy = (0.99, 0.85, 0.97, 0.88, 0.96)  # higher mean, gain within noise
    steady = (0.93, 0.94, 0.95, 0.96, 0.97)  # +0.03 on every fold
    assert choose_candidate(rows(default, noisy), 2.0)["candidate"] == "0"
    assert choose_candidate(rows(default, noisy), 0.0)["candidate"] == "1"  # min_evidence 0: the best score wins
    trace = rows(default, noisy, steady)
    assert choose_candidate(trace, 2.0)["candidate"] == "2" and trace[0]["gain_se"] is None and trace[1]["gain_se"] < 2.0
    worse = tuple(f - 0.01 for f in default)
    assert choose_candidate(rows(default, worse), 0.0)["candidate"] == "0"


def test_recipe_refuses_an_unknown_candidate(tmp_path) -> None:
    recipe = tiny_recipe(tmp_path, quantization__method="auto", quantization__tuning={"candidates": ["mse", "kl"]})
    assert_one_line_error(edgekit("export", recipe, "--out", tmp_path / "out"), "quantization.tuning.candidates", "kl")
    assert not (tmp_path / "out").exists()


def test_candidates_from_one_observation_equal_each_method_alone(yolo, fp32_onnx, calib_images, tmp_path, monkeypatch) -> None:
    from edgekit.onnx_io import load_onnx
    from edgekit.quantization.placement import ORT_PLACEMENT, quantized_nodes, tensors_to_quantize

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    family, _ = yolo
    model = load_onnx(fp32_onnx)
    tensors = tensors_to_quantize(model, quantized_nodes(model, ORT_PLACEMENT, [], []))[:12]
    images, prep = calib_images[:3], (lambda p: family.preprocess(p)[0])
    texts = ["percentile:99.9", "mse", "entropy", "minmax"]
    together = collect_candidates(model, tensors, images, prep, texts)
    assert list(together) == texts and not any(r.from_cache for r in together.values())
    for text in texts:
        method, pct = parse_candidate(text)
        alone = collect_ranges(model, tensors, images, prep, method, pct)  # the same key: a verified cache hit
        assert alone.from_cache and alone.key == together[text].key and alone.ranges == together[text].ranges
        fresh = collect_ranges(model, tensors, images, prep, method, pct, use_cache=False)
        assert fresh.ranges == together[text].ranges, text
    assert len({tuple(r.ranges.values()) for r in together.values()}) == len(texts)  # four different methods


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("auto")
    recipe = tiny_recipe(folder, quantization__method="auto", quantization__calibration__count=12,
                         quantization__tuning={"candidates": ["percentile:99.99", "percentile:99.999", "mse", "minmax"]})
    result = edgekit("export", recipe, "--out", folder / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run"


def test_auto_chooses_the_best_tuning_score_and_reports_both_sets(auto_run) -> None:
    report = json.loads((auto_run / "report.json").read_text())
    assert report["schema_version"] == "1.6"
    sets = report["tuning"]["sets"]
    assert sets["tuning_images"] == 12 and sets["tuning_folders"] == [str(COCO / "calib_images")]
    assert sets["evaluation_images"] == 8 and sets["evaluation_folders"] == [str(COCO / "images")]
    assert sets["evaluation_used_for_choices"] is False and len(sets["tuning_sha256"]) == 64
    ranges = report["tuning"]["graphs"]["model"]["ranges"]
    assert ranges["metric"].startswith("output_cosine")  # PTQ settings: raw output cosine (benchmarks/proxy_correlation.py)
    scores = {c["candidate"]: c["score"] for c in ranges["candidates"]}
    assert list(scores) == ["percentile:99.99", "percentile:99.999", "mse", "minmax"]
    assert all(0.0 < s < 1.0 for s in scores.values()) and len(set(scores.values())) > 1  # real int8 error, candidates differ
    for c in ranges["candidates"]:
        assert len(c["fold_scores"]) == 5 and min(c["fold_scores"]) <= c["score"] <= max(c["fold_scores"])
    assert ranges["chosen"] == choose_candidate([dict(c) for c in ranges["candidates"]], 2.0)["candidate"]
    method, pct = parse_candidate(ranges["chosen"])
    int8 = next(v for v in report["variants"] if v["name"] == "onnxruntime:int8")
    q = int8["manifest"]["settings"]["quantization"]
    assert q["method"] == method and q["percentile"] == (pct if method == "percentile" else None)
    spec = json.loads((auto_run / "quant_spec.json").read_text())
    assert spec["settings"]["method"] == method
    md = (auto_run / "report.md").read_text()
    assert "## Tuning (what chose the settings)" in md and "**12 tuning samples**" in md and "(chosen)" in md
    assert not any(p.name.startswith(".tune-") for p in auto_run.iterdir())  # candidates were temporary


def test_tuning_images_folder_is_used_and_recorded(tmp_path) -> None:
    tuning = tmp_path / "tuning"
    tuning.mkdir()
    for p in sorted((COCO / "calib_images").iterdir())[20:26]:
        shutil.copy(p, tuning / p.name)
    recipe = tiny_recipe(tmp_path, quantization__method="auto", quantization__tuning={"images": str(tuning), "candidates": ["mse", "minmax"]})
    result = edgekit("export", recipe, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["tuning"]["sets"]["tuning_images"] == 6 and report["tuning"]["sets"]["tuning_folders"] == [str(tuning)]


@pytest.mark.parametrize("role", ["calibration", "tuning"])
def test_an_evaluation_image_among_calibration_or_tuning_images_is_refused(tmp_path, role) -> None:
    folder = tmp_path / role
    folder.mkdir()
    for p in sorted((COCO / "calib_images").iterdir())[:7]:
        shutil.copy(p, folder / p.name)
    evaluation = COCO / "images" / json.loads(ANNOTATIONS.read_text())["images"][0]["file_name"]  # evaluated by the tiny recipe
    shutil.copy(evaluation, folder / "zz_renamed_copy.jpg")
    key = {"quantization__calibration__images": str(folder)} if role == "calibration" else \
        {"quantization__method": "auto", "quantization__tuning": {"images": str(folder)}}
    recipe = tiny_recipe(tmp_path, **key)
    assert_one_line_error(edgekit("export", recipe, "--out", tmp_path / "out"), "are also evaluation images", "zz_renamed_copy.jpg")
    assert not (tmp_path / "out").exists()


def test_bias_correction_removes_the_first_convs_mean_shift(yolo, fp32_onnx, calib_images) -> None:
    """On real YOLOv5n: the first conv sees only its own int8 error, so its output's per-channel mean shift (Q/DQ vs
    FP32, measured on other calibration images than the correction used) must shrink; the result is deterministic."""
    import numpy as np
    import onnxruntime as ort

    from edgekit.onnx_io import load_onnx
    from edgekit.quantization.bias_correction import correct_biases
    from edgekit.quantization.calibration import observe_model
    from edgekit.quantization.placement import ORT_PLACEMENT, quantized_nodes
    from edgekit.quantization.ptq import calibration_settings, place, tensors_for_placements

    family, _ = yolo
    model = load_onnx(fp32_onnx)
    prep = lambda p: family.preprocess(p)[0]  # noqa: E731
    tensors = tensors_for_placements(model, [ORT_PLACEMENT], [], [])
    calib = collect_ranges(model, tensors, calib_images[:8], prep, "percentile", 99.99)
    settings = calibration_settings("percentile", 99.99, True, 8, calib.key)
    qdq, spec = place(model, ORT_PLACEMENT, calib.ranges, [], [], settings)
    nodes = quantized_nodes(model, ORT_PLACEMENT, [], [])
    corrected, info = correct_biases(model, spec, nodes, calib_images[:8], prep)
    assert info["layers"] > 50 and 0 < info["mean_abs_shift"] < info["max_abs_shift"]
    again, _ = correct_biases(model, spec, nodes, calib_images[:8], prep)
    assert again.SerializeToString(deterministic=True) == corrected.SerializeToString(deterministic=True)
    qdq_bc, _ = place(corrected, ORT_PLACEMENT, calib.ranges, [], [], settings)
    first = next(n for n in model.graph.node if n.op_type == "Conv").output[0]

    def channel_mean(m) -> np.ndarray:
        session = ort.InferenceSession(observe_model(m, [first]), providers=["CPUExecutionProvider"])
        return np.mean([session.run([first], prep(p))[0].mean(axis=(0, 2, 3)) for p in calib_images[40:48]], axis=0)

    reference = channel_mean(model)
    before, after = np.abs(channel_mean(qdq) - reference).mean(), np.abs(channel_mean(qdq_bc) - reference).mean()
    assert after < 0.5 * before, (before, after)


def test_sensitivity_command_prints_and_writes_the_table(tmp_path) -> None:
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "sensitivity.json"
    result = edgekit("sensitivity", recipe, "--top", 5, "--json", out)
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads(out.read_text())["model"]
    assert len(table["rows"]) == 60  # YOLOv5n: every conv with its SiLU (adds, concats, pools joined)
    for row in table["rows"]:
        assert row["nodes"] and row["loss_float_only_pt"] >= 0 and row["latency_cost_ms"] is not None
    top = min(table["rows"], key=lambda r: r["loss_float_only_pt"])["group"]  # most loss recovered (which group depends on the CPU)
    assert "quantizer group sensitivity" in result.stdout and top in result.stdout
    assert not [p for p in tmp_path.iterdir() if p.name not in {"tiny.yaml", "sensitivity.json"}]  # nothing else written
    again = edgekit("sensitivity", recipe, "--json", out)
    assert_one_line_error(again, "exists", str(out))


def test_search_in_the_job_keeps_its_groups_float_and_reports_the_trace(tmp_path) -> None:
    recipe = tiny_recipe(tmp_path, quantization__search={"time_limit_s": 60, "latency_runs": 5, "images": 8})
    result = edgekit("export", recipe, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    search = report["tuning"]["graphs"]["model"]["search"]
    assert search["trace"][0]["step"] == "all int8" and search["tuning_images"] == 8
    assert search["met"] and search["loss_pt"] <= search["max_loss_pt"] == search["baseline_loss_pt"]  # default budget: full int8's loss
    assert search["sensitivity"]["rows"] and all(r["latency_cost_ms"] is not None for r in search["sensitivity"]["rows"])
    spec = json.loads((run / "quant_spec.json").read_text())
    assert set(search["float_nodes"]) <= set(spec["float_nodes"])
    md = (run / "report.md").read_text()
    assert "### Mixed-precision search" in md and "### Sensitivity" in md and "measured on this machine" in md
    assert "![sensitivity](sensitivity.svg)" in md
    svg = ElementTree.parse(run / "sensitivity.svg").getroot()  # well-formed XML, one labelled bar per ranked group
    bars = [r for r in svg.iter("{http://www.w3.org/2000/svg}rect") if r.find("{http://www.w3.org/2000/svg}title") is not None]
    ranked = min(10, len(search["sensitivity"]["rows"]))
    assert len(bars) == 2 * ranked and all(float(b.get("width")) >= 1 for b in bars)
    texts = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    top = max(search["sensitivity"]["rows"], key=lambda r: r["recovered_pt"] or 0.0)
    assert top["group"] in texts and f"{top['recovered_pt']:+.2f}" in texts


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason='openvino is not installed (pip install -e ".[openvino]")')
def test_openvino_searches_its_own_float_groups_in_its_own_latency(tmp_path) -> None:
    recipe = tiny_recipe(tmp_path, quantization__search={"time_limit_s": 60, "latency_runs": 5, "images": 8},
                         targets=["onnxruntime:fp32", "onnxruntime:int8", "openvino:int8"])
    result = edgekit("export", recipe, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    record = report["tuning"]["graphs"]["model"]
    ort, ov = record["search"], record["backend_searches"]["openvino"]
    assert ort["backend"] == "onnxruntime" and ov["backend"] == "openvino" and ov["met"]
    assert ov["sensitivity"] is None and ov["sensitivity_seconds"] == 0.0  # ORT's table reused, not recomputed
    head = {g for g in (r["group"] for r in ort["sensitivity"]["rows"]) if g.startswith("model.24.m")}
    assert head and not head & {g for t in ov["trace"] for g in t["float_groups"]}  # NNCF's scope keeps the head float already
    int8 = next(v for v in report["variants"] if v["name"] == "openvino:int8")
    nncf = int8["manifest"]["settings"]["backend"]["nncf"]
    assert nncf["ignored_onnx_nodes"] >= len(ov["float_nodes"])
    md = (tmp_path / "run" / "report.md").read_text()
    assert "### Mixed-precision search, onnxruntime" in md and "### Mixed-precision search, openvino" in md
    assert "openvino, each candidate built by its own quantizer" in md


def test_sensitivity_plot_scales_bars_to_values() -> None:
    from edgekit.reports.plots import sensitivity_svg

    rows = [{"group": "a", "recovered_pt": 2.0, "latency_cost_ms": -1.0}, {"group": "b", "recovered_pt": 0.5, "latency_cost_ms": 3.0},
            {"group": "c", "recovered_pt": -0.5, "latency_cost_ms": None}]
    svg = ElementTree.fromstring(sensitivity_svg({"rows": rows}))
    ns = "{http://www.w3.org/2000/svg}"
    bars = {r.find(f"{ns}title").text: float(r.get("width")) for r in svg.iter(f"{ns}rect") if r.find(f"{ns}title") is not None}
    assert bars["+2.00"] == pytest.approx(4 * bars["+0.50"], rel=0.02)  # recovered panel: width proportional to the value
    assert bars["+3.00"] == pytest.approx(3 * bars["-1.00"], rel=0.02)  # cost panel, both signs from one zero line
    assert "n/a" in {t.text for t in svg.iter(f"{ns}text")}  # an unmeasured cost is said, not drawn as zero
    assert sensitivity_svg({"rows": rows}) == sensitivity_svg({"rows": list(rows)})  # same report, same bytes


def test_litert_scope_regex_names_one_module_and_not_its_namesakes_deeper_down() -> None:
    from edgekit.backends.litert.scope import module_path, module_regex

    prefix = "Wrapper_x/Split_wrapped/YoloModel_model/"
    own = module_regex(module_path("/model.2/cv1/conv/Conv"), prefix)
    head = module_regex(module_path("/model.24/m.0/Conv"), prefix)
    assert re.search(own, prefix + "C3_2/Conv_cv1/Conv2d_conv;2")
    assert not re.search(own, prefix + "C3_6/Sequential_m/Bottleneck_2/Conv_cv1/Conv2d_conv;2")  # model.6.m.2.cv1
    assert not re.search(own, prefix + "C3_6/Sequential_m/Bottleneck_2/Conv_cv1/SiLU_act;;" + prefix + "C3_2/Conv_cv1/Conv2d_conv;")
    assert re.search(head, prefix + "Detect_24/Conv2d_0;2")  # a ModuleList is never called: no frame of its own
    assert not re.search(head, prefix + "Detect_24/Conv2d_1;2") and not re.search(head, prefix + "Detect_24;43")


@pytest.mark.skipif(importlib.util.find_spec("ai_edge_quantizer") is None, reason='ai-edge-quantizer is not installed (pip install -e ".[tflite]")')
def test_litert_searches_its_own_float_groups_and_keeps_onnx_float_nodes_float(tmp_path) -> None:
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    from edgekit.backends.litert.scope import scope_prefix

    recipe = tiny_recipe(tmp_path, quantization__search={"time_limit_s": 60, "latency_runs": 5, "images": 8},
                         quantization__keep_float={"nodes": ["/model.2/cv1/*"]},
                         targets=["onnxruntime:fp32", "onnxruntime:int8", "tflite:int8"])
    result = edgekit("export", recipe, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    lite = report["tuning"]["graphs"]["model"]["backend_searches"]["tflite"]
    assert lite["backend"] == "tflite" and lite["scored_on"] == "tflite" and lite["met"] and lite["trace"][0]["step"] == "all int8"
    assert lite["sensitivity"] is None  # ONNX Runtime's table ranks the groups; LiteRT only prices and scores them
    steps = list(report["timings_s"])
    assert steps.index("search tflite") == steps.index("build tflite:int8") - 1  # searched just before its own build (JAX loads there)
    variant = next(v for v in report["variants"] if v["name"] == "tflite:int8")
    settings = variant["manifest"]["settings"]["backend"]["quantization"]
    assert settings["searched_float_nodes"] == lite["float_nodes"]

    model = fu.read_model(str(run / "tflite" / "model_int8.tflite"))
    prefix = scope_prefix(run / "tflite" / "model_fp32.tflite")
    graph = model.subgraphs[0]
    convs = {fu.get_op_scope(op, graph.tensors).split(";")[0]: graph.tensors[op.outputs[0]].type for op in graph.operators
             if model.operatorCodes[op.opcodeIndex].builtinCode == 3}  # CONV_2D -> its output's TensorType
    def conv(*path: str) -> int:
        return next(t for scope, t in convs.items() if scope.startswith(prefix) and scope.endswith("/".join(path) + "/torch.nn.modules.conv.Conv2d_conv"))
    FLOAT32, INT8 = 0, 9  # TFLite TensorType
    assert conv("C3_2", "edgekit.models.yolo.modules.Conv_cv1") == FLOAT32  # keep_float.nodes, mapped by module
    def chosen_float(module: str) -> bool:  # what LiteRT's own search floated: it follows this CPU's kernel timings
        return any(module == g or module.startswith(g + ".") for g in lite["float_groups"])
    assert conv("C3_2", "edgekit.models.yolo.modules.Conv_cv2") == (FLOAT32 if chosen_float("model.2.cv2") else INT8)
    assert conv("edgekit.models.yolo.modules.Conv_0") == (FLOAT32 if chosen_float("model.0") else INT8)
    assert "tflite, each candidate built by its own quantizer and its tuning loss scored on it" in (run / "report.md").read_text()


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason='openvino is not installed (pip install -e ".[openvino]")')
def test_budgeted_search_prices_tensorrt_by_its_cost_model_and_scores_openvino_on_its_own_builds(tmp_path) -> None:
    """An explicit budget no quantized candidate meets but all float: TensorRT (no GPU here) searches its own placement
    priced by the cost model, its Q/DQ file keeps its own choice float (not ONNX Runtime's); OpenVINO scores each
    candidate on the IR built as the target is."""
    import onnx

    recipe = tiny_recipe(tmp_path, quantization__search={"time_limit_s": 40, "latency_runs": 3, "images": 8, "max_loss_pt": 0.0},
                         targets=["onnxruntime:fp32", "onnxruntime:int8", "openvino:int8", "tensorrt:int8"])
    result = edgekit("export", recipe, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    record = report["tuning"]["graphs"]["model"]
    trt, ov = record["backend_searches"]["tensorrt"], record["backend_searches"]["openvino"]
    assert trt["priced_by"].startswith("cost model") and "Jetson Orin Nano" in trt["priced_by"] and "tensorrt placement" in trt["scored_on"]
    assert all(t["se_ms"] == 0.0 and t["step"] != "confirm" for t in trt["trace"]) and "latency priced by a cost model, not measured" in trt["notes"]
    assert trt["float_groups"] and trt["trace"][0]["float_groups"] == []
    assert ov["scored_on"] == "openvino (each candidate built as the target is)"
    spec = json.loads((tmp_path / "run" / "tensorrt" / "quant_spec_tensorrt.json").read_text())
    ort_only = set(record["search"]["float_nodes"]) - set(trt["float_nodes"])
    assert set(trt["float_nodes"]) <= set(spec["float_nodes"]) and not ort_only & set(spec["float_nodes"])
    qdq = onnx.load(str(tmp_path / "run" / "tensorrt" / "model_int8_qdq.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in qdq.graph.node) > 0  # the rest stays int8
    md = (tmp_path / "run" / "report.md").read_text()
    assert "### Mixed-precision search, tensorrt" in md and "priced by a cost model" in md


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason='openvino is not installed (pip install -e ".[openvino]")')
def test_nncf_accuracy_control_decides_on_the_tuning_images_label_free(tmp_path) -> None:
    ac = {"backend": "openvino", "precision": "int8", "accuracy_control": True}
    recipe = tiny_recipe(tmp_path, targets=["onnxruntime:fp32", ac], openvino__accuracy_control_max_loss_pt=0.5)
    result = edgekit("export", recipe, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    variant = next(v for v in report["variants"] if v["name"] == "openvino:int8+ac")
    check = variant["manifest"]["settings"]["backend"]["nncf"]["accuracy_control"]
    assert check["metric"].startswith("pseudo_map (tuning images, label-free)") and check["max_drop"] == pytest.approx(0.005)
    assert variant["status"] == "measured" and report["tuning"]["sets"]["evaluation_used_for_choices"] is False
    # without a tuning budget it names the keys to set; validating on the evaluation images says so in the report
    assert_one_line_error(edgekit("export", tiny_recipe(tmp_path, "nobudget.yaml", targets=["onnxruntime:fp32", ac]), "--out", tmp_path / "r2"),
                          "accuracy_control_max_loss_pt")
