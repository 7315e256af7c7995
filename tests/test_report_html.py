"""report.html in a real browser (Debian's chromium, headless): no script errors, every plot drawn with real
geometry, no horizontal overflow at a phone-sized viewport, screenshots kept beside the report."""

from __future__ import annotations

import html as htmllib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import COCO, WEIGHTS_ST, edgekit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run installs it)")


def small_run(tmp: Path, name: str, threads: int = 2, head_float: bool = True) -> Path:
    """A small real YOLOv5n run (two ONNX Runtime variants and OpenVINO int8, 10 evaluation images)."""
    recipe = tmp / f"{name}.yaml"
    recipe.write_text(json.dumps({
        "name": "yolov5n-html", "model": {"family": "yolo", "weights": str(WEIGHTS_ST), "input_size": 320},
        "quantization": {"calibration": {"images": str(COCO / "calib_images"), "count": 8, "warn_below": 1}, "method": "percentile",
                         "keep_float": {"head": head_float}},
        "targets": ["onnxruntime:fp32", "onnxruntime:int8", "openvino:int8"],
        "evaluation": {"dataset": {"images": str(COCO / "images"), "annotations": str(COCO / "annotations" / "instances_val2017_subset.json")}, "max_images": 10},
        "benchmark": {"warmup": 1, "runs": 12, "threads": threads}, "budgets": {"mAP50-95": {"max_drop": 0.02}},
    }))
    out = tmp / name
    result = edgekit("export", recipe, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return small_run(tmp_path_factory.mktemp("html"), "run")


def browse(page: Path, size: str, screenshot: Path) -> dict[str, str]:
    """Render ``page`` headless at ``size``; the ``data-`` attributes the page's probe wrote on <body> after load
    (drawn plot sizes, script errors caught by window.onerror, sideways overflow)."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files", f"--window-size={size}"]
    shot = subprocess.run([*flags, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    dom = subprocess.run([*flags, "--virtual-time-budget=3000", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    return {k: htmllib.unescape(v) for k, v in re.findall(r'data-([a-z]+)="([^"]*)"', body)}


def test_report_html_is_self_contained_and_has_every_section(run):
    from edgekit.reports import load_report
    from edgekit.reports.html import primary_metric

    page = (run / "report.html").read_text()
    assert "<script src" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    report = load_report(run / "report.json")
    assert primary_metric(report) == "mAP50-95"
    assert all(v.latency_ms and len(v.latency_ms.samples) == 12 for v in report.variants)  # raw timed samples are kept
    for section in ("Device", "Variants", "Accuracy vs latency", "Latency distributions", "Per-class AP change", "Manifest"):
        assert f"<h2>{section}" in page
    assert report.device["cpu_model"] in page and ("PASS" in page or "FAIL" in page)
    assert page.count("<details>") == len(report.variants)


@needs_chromium
def test_report_html_renders_in_chromium_on_desktop_and_phone(run):
    expected = {"tradeoff", "latency", "class-ap"}
    for name, size in (("desktop", "1280,2000"), ("phone", "390,844")):
        data = browse(run / "report.html", size, run / f"report_{name}.png")
        assert not data.get("errors"), data["errors"]
        plots = {p["id"]: p for p in json.loads(data["plots"])}
        assert expected <= set(plots), plots
        for p in plots.values():
            assert p["width"] > 50 and p["height"] > 50 and p["marks"] >= 3, p
        assert plots["latency"]["marks"] >= 3 * 12  # every timed call of every variant is a dot
        assert data["overflow"] == "false", f"{name}: the page scrolls sideways"


def test_compare_flags_an_accuracy_regression_on_another_device_fingerprint(run, tmp_path):
    """A second run with 1 thread (another fingerprint: latency shown as ratios, not gated) whose int8 quantizes the
    head's decode too (the naive all-op int8): compare names the accuracy regression and exits 1; a run compared with
    itself has none. compare.html renders in the browser like report.html."""
    other = small_run(tmp_path, "naive-1thread", threads=1, head_float=False)
    same = edgekit("compare", run, run / "report.json")
    assert same.returncode == 0 and "no regression" in same.stdout, same.stdout + same.stderr
    result = edgekit("compare", run, other, "--html", tmp_path / "compare.html")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "REGRESSION naive-1thread: onnxruntime:int8 mAP50-95" in result.stderr
    assert "onnxruntime:fp32 mAP50-95" not in result.stderr  # the FP32 model is the same one
    assert "another device" in result.stdout and "threads 1" in result.stdout
    assert "median latency" not in result.stderr  # different fingerprint: never a latency verdict
    assert "no regression" not in result.stdout
    page = (tmp_path / "compare.html").read_text()
    assert "naive-1thread" in page and "onnxruntime:int8" in page
    again = edgekit("compare", run, other, "--html", tmp_path / "compare.html")
    assert again.returncode == 2 and "not overwritten" in again.stderr
    if CHROMIUM:
        data = browse(tmp_path / "compare.html", "1280,1200", tmp_path / "compare.png")
        assert not data.get("errors") and json.loads(data["plots"])[0]["marks"] >= 6
