"""The report schema, the budget gate (edgekit check) and the JSON + markdown writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.errors import EdgekitError
from edgekit.recipe import Budget
from edgekit.reports import (
    BudgetVerdict,
    LatencyMs,
    Report,
    Variant,
    check_report,
    evaluate_budgets,
    load_report,
    render_markdown,
    write_report,
)


def _variant(precision: str, metrics: dict[str, float], median: float, per_class: dict[str, float] | None = None, **extra) -> Variant:
    return Variant(
        name=f"onnxruntime:{precision}",
        backend="onnxruntime",
        precision=precision,
        model_path=f"model_{precision}.onnx",
        metrics=metrics,
        per_class_ap=per_class or {},
        latency_ms=LatencyMs(median=median, p90=median * 1.1, p99=median * 1.3, min=median * 0.9, mean=median * 1.02),
        throughput_per_s=1000.0 / median,
        batch=1,
        threads=2,
        size_bytes=7_800_000 if precision == "fp32" else 2_300_000,
        peak_memory_mb=250.0,
        manifest={"versions": {"onnxruntime": "1.20.1"}, "artifact_sha256": "ab" * 32},
        **extra,
    )


CLASSES = [f"class{i:02d}" for i in range(15)]


def _report(int8_map: float = 0.2905, budgets: dict | None = None) -> Report:
    ref_pc = {c: 0.30 + 0.01 * i for i, c in enumerate(CLASSES)}
    int8_pc = {c: ap - 0.002 * i for i, (c, ap) in enumerate(ref_pc.items())}
    return Report(
        edgekit_version="0.1.0",
        created_utc="2025-01-01T00:00:00+00:00",
        recipe={"name": "yolov5n-demo", "path": "recipes/yolov5n.yaml", "sha256": "cd" * 32, "content": {"name": "yolov5n-demo"}},
        budgets={"mAP50-95": {"max_drop": 0.005}} if budgets is None else budgets,
        reference="onnxruntime:fp32",
        device={"cpu_model": "Test CPU 9000", "physical_cores": 4, "logical_cores": 8, "isa_flags": ["sse4_2", "avx2", "fma", "avx512_vnni"], "os": "Linux 6.1", "versions": {"onnxruntime": "1.20.1"}},
        variants=[
            _variant("fp32", {"mAP50-95": 0.3028, "mAP50": 0.4561}, 40.0, ref_pc),
            _variant("int8", {"mAP50-95": int8_map, "mAP50": 0.4499}, 30.0, int8_pc, fidelity={"max_abs_box": 1.5, "class_cosine": 0.998}),
        ],
        timings_s={"export": 3.2, "quantize": 12.5, "total": 30.1},
    )


# --- evaluate_budgets ------------------------------------------------------------------------------------------


def test_absolute_budget_boundary_passes_and_just_beyond_fails():
    ref = {"mAP50-95": 0.3}
    at = evaluate_budgets(ref, {"mAP50-95": 0.295}, {"mAP50-95": {"max_drop": 0.005}})
    assert [v.passed for v in at] == [True]  # 0.3 - 0.295 is 0.0050000000000000044 in floats
    assert at[0].kind == "absolute" and at[0].limit == 0.005
    assert at[0].drop == pytest.approx(0.005)
    beyond = evaluate_budgets(ref, {"mAP50-95": 0.2949}, {"mAP50-95": Budget(max_drop=0.005)})
    assert not beyond[0].passed
    assert beyond[0].message.endswith("FAIL")
    improved = evaluate_budgets(ref, {"mAP50-95": 0.31}, {"mAP50-95": {"max_drop": 0.0}})
    assert improved[0].passed and improved[0].drop < 0


def test_relative_budget_boundary_passes_and_just_beyond_fails():
    ref = {"mAP50": 0.3}
    at = evaluate_budgets(ref, {"mAP50": 0.27}, {"mAP50": {"max_relative_drop": 0.1}})
    assert at[0].passed and at[0].kind == "relative"
    assert at[0].relative_drop == pytest.approx(0.1)
    beyond = evaluate_budgets(ref, {"mAP50": 0.2699}, {"mAP50": Budget(max_relative_drop=0.1)})
    assert not beyond[0].passed
    assert "relative" in beyond[0].message and "10.00%" in beyond[0].message


def test_relative_budget_with_zero_reference():
    budgets = {"m": {"max_relative_drop": 0.5}}
    assert evaluate_budgets({"m": 0.0}, {"m": 0.0}, budgets)[0].passed
    assert evaluate_budgets({"m": 0.0}, {"m": 0.1}, budgets)[0].passed
    dropped = evaluate_budgets({"m": 0.0}, {"m": -0.001}, budgets)[0]
    assert not dropped.passed and dropped.relative_drop is None


def test_message_format_names_metric_drop_values_and_budget():
    (v,) = evaluate_budgets({"mAP50-95": 0.3028}, {"mAP50-95": 0.2905}, {"mAP50-95": {"max_drop": 0.005}})
    assert v.message == "mAP50-95 dropped 0.0123 (0.3028 -> 0.2905), budget 0.0050 (absolute): FAIL"


def test_missing_metric_fails_on_either_side():
    budgets = {"mAP50-95": {"max_drop": 0.01}}
    (v,) = evaluate_budgets({"mAP50-95": 0.3}, {"mAP50": 0.4}, budgets)
    assert not v.passed and v.value is None and v.drop is None
    assert "mAP50-95 missing" in v.message and "variant" in v.message
    (r,) = evaluate_budgets({}, {"mAP50-95": 0.3}, budgets)
    assert not r.passed and "missing from reference" in r.message


def test_nan_metric_fails():
    (v,) = evaluate_budgets({"m": 0.3}, {"m": float("nan")}, {"m": {"max_drop": 1.0}})
    assert not v.passed


def test_bad_budget_is_a_user_error():
    with pytest.raises(EdgekitError, match="bad budget for metric 'm'"):
        evaluate_budgets({"m": 0.3}, {"m": 0.3}, {"m": {"max_drop": 0.1, "max_relative_drop": 0.1}})


# --- check_report ----------------------------------------------------------------------------------------------


def test_check_report_int8_over_budget_fails_and_names_metric_drop_budget():
    report = _report(int8_map=0.2905)
    # a stale stored verdict saying PASS must not be trusted
    report.variants[1].budget = [BudgetVerdict(metric="mAP50-95", limit=0.005, kind="absolute", passed=True, message="stale")]
    ok, lines = check_report(report)
    assert ok is False
    assert lines == ["onnxruntime:int8: mAP50-95 dropped 0.0123 (0.3028 -> 0.2905), budget 0.0050 (absolute): FAIL"]


def test_check_report_within_budget_passes():
    ok, lines = check_report(_report(int8_map=0.2990))
    assert ok is True
    assert len(lines) == 1 and lines[0].startswith("onnxruntime:int8: mAP50-95 dropped 0.0038") and lines[0].endswith("PASS")


def test_check_report_without_budgets_is_ok():
    ok, lines = check_report(_report(budgets={}))
    assert ok is True and len(lines) == 1 and "no budgets" in lines[0]


def test_check_report_missing_reference_is_a_user_error():
    report = _report()
    report.reference = "onnxruntime:fp16"
    with pytest.raises(EdgekitError, match="reference variant 'onnxruntime:fp16'"):
        check_report(report)


def test_check_report_missing_metric_in_variant_fails():
    report = _report(budgets={"mAP75": {"max_relative_drop": 0.02}})
    report.variants[0].metrics["mAP75"] = 0.33  # only the variant lacks it (a reference without it is an error, below)
    ok, lines = check_report(report)
    assert not ok and "mAP75 missing" in lines[0]


@pytest.mark.parametrize("value", [0.0, float("nan"), None])
def test_check_report_reference_scoring_nothing_is_a_user_error(value):
    report = _report(budgets={"mAP50-95": {"max_relative_drop": 0.5}, "logit_kl": {"max_value": 0.1}})
    for v in report.variants:
        v.metrics["logit_kl"] = 0.0  # a ceiling's reference value is 0 by definition: exempt
        v.metrics.pop("mAP50-95")
        if value is not None:
            v.metrics["mAP50-95"] = value
    with pytest.raises(EdgekitError, match="reference onnxruntime:fp32 (scores|has no) .*budgeted metric mAP50-95") as info:
        check_report(report, source="runs/x/report.json")
    assert "runs/x/report.json" in str(info.value)


# --- writer and loader -----------------------------------------------------------------------------------------


def test_write_and_load_round_trip(tmp_path: Path):
    report = _report()
    report.variants[1].budget = evaluate_budgets(report.variants[0].metrics, report.variants[1].metrics, report.budgets)
    json_path, md_path = write_report(report, tmp_path / "out")
    assert json_path == tmp_path / "out" / "report.json" and md_path == tmp_path / "out" / "report.md"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json", "report.md"]
    loaded = load_report(json_path)
    assert loaded == report
    data = json.loads(json_path.read_text())
    assert data["schema_version"] == "1.6" and data["integrity"]["files"] == {}  # no model files beside this hand-made report
    assert loaded.integrity is not None and loaded.integrity.digest == data["integrity"]["digest"]
    assert check_report(loaded) == check_report(report)
    # a folder holding report.json is accepted too
    assert load_report(tmp_path / "out") == report


def test_pipeline_style_dict_variants_validate():
    report = _report()
    data = report.model_dump()
    data["variants"][0]["fidelity"] = None
    assert Report.model_validate(data).variants[0].fidelity is None


def test_markdown_contains_rows_and_sections():
    md = render_markdown(_report())
    assert md.startswith("# edgekit report: yolov5n-demo\n")
    assert "Test CPU 9000" in md and "4 cores / 8 threads" in md and "avx512_vnni" in md and "avx2" in md
    assert "Linux 6.1" in md and "onnxruntime 1.20.1" in md
    header = next(line for line in md.splitlines() if line.startswith("| variant | precision"))
    assert "mAP50-95" in header and "speed-up" in header and "size MB" in header and "budget" in header
    ref_row = next(line for line in md.splitlines() if line.startswith("| onnxruntime:fp32 | fp32"))
    int8_row = next(line for line in md.splitlines() if line.startswith("| onnxruntime:int8 | int8"))
    assert "0.3028" in ref_row and "1.00x" in ref_row and "7.80" in ref_row and "reference" in ref_row
    assert "0.2905 (-1.23 pt)" in int8_row and "30.00 / 33.00" in int8_row and "1.33x" in int8_row
    assert "2.30" in int8_row and "FAIL" in int8_row
    assert "## Fidelity" in md and "class_cosine" in md and "0.998" in md
    assert "## Per-class AP" in md
    # only the 10 largest per-class drops: class14 dropped most, class00 not at all
    assert "| class14 |" in md and "| class05 |" in md and "| class04 |" not in md and "| class00 |" not in md
    assert "## Timings" in md and "| quantize | 12.50 |" in md
    passing = render_markdown(_report(int8_map=0.2990))
    assert next(line for line in passing.splitlines() if line.startswith("| onnxruntime:int8")).endswith("| PASS |")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "not an edgekit report"),
        ('{"schema_version": "1.0", "edgekit_version": "0.1.0"}', "missing key"),
        ('{"schema_version": "9.0"}', "unsupported report schema_version"),
    ],
)
def test_load_report_corrupt_file_names_path(tmp_path: Path, content: str, needle: str):
    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(EdgekitError) as info:
        load_report(path)
    message = str(info.value)
    assert str(path) in message and needle in message and "fix:" in message


def test_load_report_missing_file(tmp_path: Path):
    with pytest.raises(EdgekitError, match="report not found") as info:
        load_report(tmp_path / "nope.json")
    assert str(tmp_path / "nope.json") in str(info.value)


def test_load_report_truncated_file(tmp_path: Path):
    text = json.dumps(_report().model_dump(mode="json"))
    path = tmp_path / "report.json"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(EdgekitError, match="invalid JSON"):
        load_report(path)


def test_write_report_failure_leaves_no_files(tmp_path: Path):
    out = tmp_path / "out"
    report = _report()
    report.variants[1].manifest["settings"] = object()  # not JSON-serializable
    with pytest.raises(ValueError, match="serialize"):  # pydantic cannot serialize it
        write_report(report, out)
    assert not out.exists() or list(out.iterdir()) == []


def test_write_report_failure_keeps_previous_report_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "out"
    good = _report()
    write_report(good, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    import edgekit.reports.writer as writer

    def broken(report):  # markdown rendering fails after the JSON text was produced
        raise RuntimeError("boom")

    monkeypatch.setattr(writer, "render_markdown", broken)
    with pytest.raises(RuntimeError, match="boom"):
        write_report(_report(int8_map=0.1), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(out.glob("*.partial")) and not list(out.glob(".*.partial"))


def test_write_report_failure_while_writing_removes_partials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "out"
    real_write_text = Path.write_text

    def failing_write_text(self, data, *args, **kwargs):
        if self.name.startswith(".report.md."):
            raise OSError("disk full")
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(OSError, match="disk full"):
        write_report(_report(), out)
    assert list(out.iterdir()) == []


def test_write_report_leaves_no_partial_files(tmp_path: Path):
    write_report(_report(), tmp_path)
    write_report(_report(int8_map=0.29), tmp_path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json", "report.md"]
    assert load_report(tmp_path / "report.json").variants[1].metrics["mAP50-95"] == 0.29


def test_ceiling_budget_for_lower_is_better_metrics():
    budgets = {"logit_kl": {"max_value": 0.05}}
    at = evaluate_budgets({"logit_kl": 0.0}, {"logit_kl": 0.05}, budgets)[0]
    assert at.passed and at.kind == "ceiling" and at.message == "logit_kl is 0.0500, budget max value 0.0500: PASS"
    over = evaluate_budgets({"logit_kl": 0.0}, {"logit_kl": 0.0501}, {"logit_kl": Budget(max_value=0.05)})[0]
    assert not over.passed and over.message.endswith("FAIL")
    assert not evaluate_budgets({}, {"logit_kl": float("nan")}, budgets)[0].passed
    missing = evaluate_budgets({"logit_kl": 0.0}, {"token_agreement": 1.0}, budgets)[0]
    assert not missing.passed and "logit_kl missing from variant metrics" in missing.message
    with pytest.raises(EdgekitError):
        evaluate_budgets({}, {}, {"m": {"max_value": 0.1, "max_drop": 0.1}})


# --- report.html and compare: pure functions --------------------------------------------------------------------


def test_pareto_front_keeps_only_undominated_variants():
    from edgekit.reports.html import pareto

    points = [("fp32", 40.0, 0.30), ("int8", 30.0, 0.29), ("slow-worse", 45.0, 0.28), ("ov", 25.0, 0.295), ("tie", 30.0, 0.285)]
    assert pareto(points) == ["ov", "fp32"]  # ov beats int8 and tie on both; fp32 is slower but more accurate
    assert pareto([("a", 10.0, 0.1), ("b", 20.0, 0.2), ("c", 30.0, 0.15)]) == ["a", "b"]


def test_device_card_and_fingerprint_show_gpu_and_jetson_power_mode():
    from edgekit.reports.compare import fingerprint
    from edgekit.reports.html import device_card, render_html

    report = _report()
    assert "no GPU" in fingerprint(report) and "avx512_vnni" in fingerprint(report)
    report.device |= {"gpus": [{"name": "Orin", "driver": "540.4", "compute_capability": "8.7"}], "jetson_model": "NVIDIA Jetson Orin Nano",
                      "power_mode": "NV Power Mode: 15W", "l4t": "R36.4"}
    card = device_card(report)
    assert "Orin (driver 540.4, sm 8.7)" in card and "NVIDIA Jetson Orin Nano" in card and "15W" in card and "R36.4" in card
    assert "Orin / NVIDIA Jetson Orin Nano NV Power Mode: 15W" in fingerprint(report)
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and 'id="tradeoff"' in page and 'id="class-ap"' in page
    assert 'id="latency"' not in page  # this report kept no raw samples: no distribution is drawn from nothing


def test_compare_gates_latency_only_on_the_same_fingerprint():
    from edgekit.reports.compare import compare_reports

    base, slower = _report(), _report()
    slower.variants[1].latency_ms.median *= 1.5
    same = compare_reports([("a", base), ("b", slower)])
    assert len(same.regressions) == 1 and "int8 median latency" in same.regressions[0]
    slower.device = dict(slower.device, cpu_model="Another CPU")
    other = compare_reports([("a", base), ("b", slower)])
    assert other.regressions == [] and any("another device" in n for n in other.notes)
    worse = _report(int8_map=0.28)
    assert any("mAP50-95 0.2800" in r for r in compare_reports([("a", base), ("b", worse)]).regressions)
