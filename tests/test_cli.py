"""The command line end to end on the real YOLOv5n weights and COCO images: export, check, eval, bench, inspect,
and bad input (one-line error, exit 2, no traceback, nothing half-written)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import COCO, REPO, WEIGHTS_ST, edgekit

EDGEKIT_CMD = [sys.executable, "-m", "edgekit.cli"]


def recipe_file(tmp_path: Path, name: str = "recipe.yaml", **changes) -> Path:
    data = yaml.safe_load((REPO / "recipes" / "yolov5n.yaml").read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The shipped YOLOv5n recipe, exactly as the README runs it."""
    out = tmp_path_factory.mktemp("runs") / "yolov5n"
    result = edgekit("export", "recipes/yolov5n.yaml", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    (out.parent / "export.stderr").write_text(result.stderr)
    return out


# what TensorFlow/LiteRT, absl, XNNPACK, torchao and torch print during a YOLOv5n export with LiteRT (issue 15)
THIRD_PARTY_NOISE = ("absl::InitializeLog", "XNNPACK delegate", "Failed to load", "_pytree", "flatbuffer_export.cc", "oneDNN")


def test_export_console_shows_no_third_party_output(run):
    stderr = (run.parent / "export.stderr").read_text()
    assert not [n for n in THIRD_PARTY_NOISE if n in stderr], stderr[-3000:]
    assert "progress.py" not in stderr  # stage lines carry no source location


def test_ci_outputs_junit_github_and_json(run, tmp_path):
    """--junit (read back by junitparser), --github (annotations on the recipe, the job summary) and --json agree
    with the plain verdicts; --confidence 0.95 also fails every budget whose interval's upper bound exceeds it."""
    from junitparser import JUnitXml

    report = json.loads((run / "report.json").read_text())
    misses = {(v["name"], b["metric"]) for v in report["variants"] for b in v["budget"] if b["drop"] > b["limit"]}
    cases = {(v["name"], b["metric"]) for v in report["variants"] for b in v["budget"]}
    summary = tmp_path / "summary.md"
    env_run = subprocess.run([*EDGEKIT_CMD, "check", run / "report.json", "--junit", tmp_path / "results.xml", "--github"],
                             capture_output=True, text=True, cwd=REPO, env=dict(os.environ, GITHUB_STEP_SUMMARY=str(summary)), timeout=300)
    assert env_run.returncode == (1 if misses else 0), env_run.stderr
    xml = JUnitXml.fromfile(str(tmp_path / "results.xml"))
    suite = next(iter(xml))
    assert suite.tests == len(cases) == 6 and suite.failures == len(misses)
    failed = {(c.classname.removeprefix("edgekit."), c.name) for c in suite if not c.is_passed}
    assert failed == misses
    for case in suite:
        for result in case.result:
            assert "dropped" in result.message and "budget" in result.message and case.classname.removeprefix("edgekit.") in result.message
    errors = [line for line in env_run.stdout.splitlines() if line.startswith("::error ")]
    assert len(errors) == len(misses) and all(line.startswith("::error file=recipes/yolov5n.yaml,title=edgekit budget ") for line in errors)
    table = summary.read_text()
    assert table.startswith("## edgekit check: yolov5n") and sum(1 for line in table.splitlines() if line.startswith("| ") and "int8" in line) == 6

    strict = edgekit("check", run / "report.json", "--confidence", "0.95", "--junit", tmp_path / "strict.xml")
    assert strict.returncode == 1
    strict_failed = {(c.classname.removeprefix("edgekit."), c.name) for c in next(iter(JUnitXml.fromfile(str(tmp_path / "strict.xml")))) if not c.is_passed}
    upper = {(v["name"], b["metric"]) for v in report["variants"] for b in v["budget"] if b["quantiles"]["0.975"] > b["limit"]}
    assert strict_failed == misses | upper and upper  # 158 images leave some budget unresolved at 95%

    as_json = edgekit("check", run / "report.json", "--json")
    payload = json.loads(as_json.stdout)
    assert payload["passed"] == (as_json.returncode == 0) == (not misses)
    assert [v["name"] for v in payload["variants"]] == [v["name"] for v in report["variants"]]

    folder = edgekit("check", run / "report.json", "--junit", tmp_path)
    assert folder.returncode == 2 and "--junit names a folder" in folder.stderr and "Traceback" not in folder.stderr


def test_github_workflow_example_is_valid_and_uses_real_options():
    workflow = REPO / "examples" / "github-actions" / "edgekit.yml"
    result = subprocess.run([str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(workflow)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    text = workflow.read_text()
    check_help, root_help = edgekit("check", "--help").stdout, edgekit("--help").stdout
    for option in ("--junit", "--github"):
        assert option in text and option in check_help
    assert "--quiet" in text and "--quiet" in root_help


def test_version_and_exit_code_table():
    from importlib.metadata import version

    result = edgekit("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"edgekit {version('edgekit')}"
    assert "Exit codes: 0" in " ".join(edgekit("--help").stdout.split())
    commands = ("export", "eval", "bench", "inspect", "build", "embed-labels", "generate", "check", "compare", "sensitivity")
    for command in commands:  # every command's help shows one example
        assert f"Example: edgekit {command} " in " ".join(edgekit(command, "--help").stdout.split()), command


def test_export_writes_every_artifact(run):
    names = {p.name for p in run.iterdir()}
    assert {"model_fp32_raw.onnx", "model_fp32.onnx", "model_int8.onnx", "quant_spec.json", "report.json", "report.md"} <= names
    assert not [n for n in names if n.endswith(".partial") or n.startswith(".")]


def test_report_reproduces_reference_accuracy_and_int8_target(run):
    report = json.loads((run / "report.json").read_text())
    assert report["schema_version"] == "1.6" and report["integrity"]["digest"] and report["reference"] == "onnxruntime:fp32"
    fp32, int8 = (next(v for v in report["variants"] if v["precision"] == p) for p in ("fp32", "int8"))
    # FP32 ONNX reproduces the published reference on these 158 images (assets README)
    assert abs(fp32["metrics"]["mAP50-95"] - 0.303) <= 0.003
    assert abs(fp32["metrics"]["mAP50"] - 0.475) <= 0.003
    # INT8 target: mAP50-95 drop <= 0.5 point. 158 images resolve a drop only to about +-0.75 pt, and the point value
    # moves with the CPU's kernels (0.16 pt on AVX-512 VNNI machines, 0.65 pt on an AVX2-only EPYC): the target the
    # data can decide is that the drop is not shown to exceed the budget (its 95% interval's lower bound is within it)
    drop = next(b for b in int8["budget"] if b["metric"] == "mAP50-95")
    assert drop["drop"] == pytest.approx(fp32["metrics"]["mAP50-95"] - int8["metrics"]["mAP50-95"])
    assert drop["interval"][0] <= 0.005 and drop["interval"][0] <= drop["drop"] <= drop["interval"][1]
    for v in (fp32, int8):
        assert {"median", "p90", "p99"} <= set(v["latency_ms"]) and v["size_bytes"] > 0
        assert len(v["per_class_ap"]) == 80
        manifest = v["manifest"]
        assert manifest["versions"]["onnxruntime"] and manifest["artifact_sha256"]
        assert any("yolov5n.safetensors" in k for k in manifest["inputs"])
    tuning = report["tuning"]["graphs"]["model"]  # every accuracy-driven choice made on the tuning images
    assert int8["manifest"]["settings"]["quantization"]["method"] == tuning["ranges"]["chosen"].split(":")[0]
    assert tuning["search"]["met"] and report["tuning"]["sets"]["evaluation_used_for_choices"] is False
    assert int8["fidelity"]["cosine_min"] > 0.99
    assert int8["size_bytes"] < fp32["size_bytes"] / 2.5
    assert all(b["passed"] == (b["drop"] <= b["limit"]) for b in int8["budget"])
    assert report["device"]["cpu_model"] and report["device"]["logical_cores"] >= 1
    md = (run / "report.md").read_text()
    assert "onnxruntime:int8" in md and "speed-up" in md


def test_check_gates_the_shipped_recipe_on_its_own_numbers(run):
    """``check`` passes exactly when every variant's point drop is within its budget (0 or 1, never an error); a
    miss is named on stderr with its budget, and every miss on the shipped recipe is within the evaluation set's
    noise: its interval's lower bound is inside the budget (a miss beyond the noise would be a real regression)."""
    report = json.loads((run / "report.json").read_text())
    verdicts = [(v["name"], b) for v in report["variants"] for b in v["budget"]]
    misses = [(name, b) for name, b in verdicts if b["drop"] > b["limit"]]
    result = edgekit("check", run / "report.json")
    assert result.returncode == (1 if misses else 0), result.stdout + result.stderr
    assert "mAP50-95 dropped" in result.stdout + result.stderr
    for name, b in misses:
        assert f"{name}: {b['metric']} dropped {b['drop']:.4f}" in result.stderr and "FAIL" in result.stderr
        assert b["interval"][0] <= b["limit"], f"{name} {b['metric']}: drop {b['drop']:.4f} beyond the noise (interval {b['interval']})"
        assert b["resolvable"] is False  # and the report says 158 images cannot decide it


def test_check_fails_on_the_naive_all_op_int8_model(tmp_path):
    """Quantizing the head's decode and concat too (the naive baseline) breaks detection: the gate must say so."""
    recipe = recipe_file(
        tmp_path, quantization__keep_float={"head": False}, export__nms_in_graph=True, quantization__calibration={"images": str(COCO / "calib_images"), "count": 8, "warn_below": 1},
        evaluation__max_images=16, benchmark={"warmup": 1, "runs": 2, "threads": 2},
        quantization__method="percentile", quantization__search=None,  # the naive baseline itself, nothing chosen or searched
        targets=["onnxruntime:fp32", "onnxruntime:int8"],
    )
    out = tmp_path / "allop"
    assert edgekit("export", recipe, "--out", out).returncode == 0
    assert (out / "model_fp32_nms.onnx").is_file() and (out / "model_int8_nms.onnx").is_file()
    result = edgekit("check", out / "report.json")
    assert result.returncode == 1
    assert "onnxruntime:int8: mAP50-95 dropped" in result.stderr and "budget 0.0050 (absolute): FAIL" in result.stderr


def test_eval_bench_inspect_on_exported_models(run):
    ev = edgekit("eval", run / "model_int8.onnx", "--max-images", 10)
    assert ev.returncode == 0 and "mAP50-95" in ev.stdout
    bench = edgekit("bench", run / "model_fp32.onnx", "--runs", 5, "--warmup", 1)
    assert bench.returncode == 0 and "median ms" in bench.stdout
    insp = edgekit("inspect", run / "model_int8.onnx")
    assert insp.returncode == 0 and "QuantizeLinear" in insp.stdout and "quantization" in insp.stdout
    assert "onnxslim" in edgekit("inspect", "--passes").stdout
    for command in ("export", "eval", "bench", "inspect", "check"):
        assert edgekit(command, "--help").returncode == 0


def _assert_clean_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_bad_weights(tmp_path):
    missing = recipe_file(tmp_path, "missing.yaml", model__weights=str(tmp_path / "nope.safetensors"))
    _assert_clean_failure(edgekit("export", missing, "--out", tmp_path / "o1"), "nope.safetensors", "not found", "fix:")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(WEIGHTS_ST.read_bytes()[:50_000])
    bad = recipe_file(tmp_path, "corrupt.yaml", model__weights=str(corrupt))
    _assert_clean_failure(edgekit("export", bad, "--out", tmp_path / "o2"), "corrupt.safetensors", "corrupt or truncated")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".o", ".edgekit-"))]


def test_corrupt_onnx(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    for command in ("inspect", "eval", "bench"):
        _assert_clean_failure(edgekit(command, bad), "broken.onnx")


def test_calibration_folder_problems_leave_nothing_behind(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    recipe = recipe_file(tmp_path, "empty.yaml", quantization__calibration={"images": str(empty), "count": 10})
    _assert_clean_failure(edgekit("export", recipe, "--out", tmp_path / "out"), "empty", "calibration folder is empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(next((COCO / "calib_images").iterdir()), mixed)
    (mixed / "readme.txt").write_text("not an image")
    recipe = recipe_file(tmp_path, "mixed.yaml", quantization__calibration={"images": str(mixed), "count": 10})
    _assert_clean_failure(edgekit("export", recipe, "--out", tmp_path / "out"), "readme.txt", "non-image")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "empty.yaml", "mixed", "mixed.yaml"]


def test_unknown_recipe_key_and_bad_input_size(tmp_path):
    typo = recipe_file(tmp_path, "typo.yaml", export__simplfy=True)
    _assert_clean_failure(edgekit("export", typo, "--out", tmp_path / "o"), "typo.yaml", "unknown recipe key 'export.simplfy'")
    odd = recipe_file(tmp_path, "odd.yaml", model__input_size=641)
    _assert_clean_failure(edgekit("export", odd, "--out", tmp_path / "o"), "odd.yaml", "641", "multiple of")
    assert not (tmp_path / "o").exists()


def test_existing_output_is_not_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    _assert_clean_failure(edgekit("export", "recipes/yolov5n.yaml", "--out", out), "already exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "user data"
