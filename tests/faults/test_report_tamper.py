"""`edgekit check` does not trust an edited report.json (issue 12): real run folders of the tiny recipe, edited the way
a hostile tester would, checked through the real command line. Exit 2 naming what differs, never 0."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import edgekit

from edgekit.reports import Report, evaluate_budgets
from edgekit.reports.verify import canonical_digest
from faults.tiny import assert_one_line_error, tiny_recipe

REF, INT8, METRIC = "onnxruntime:fp32", "onnxruntime:int8", "mAP50-95"


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory) -> Path:
    """An honest run that fails its gate: a budget of no drop at all on the naive all-op int8 (decode quantized too,
    which always loses accuracy: with 7-bit weights on a CPU without VNNI the default int8 of the tiny recipe tied
    FP32 on its 8 images). Read-only: copy before editing."""
    folder = tmp_path_factory.mktemp("failing-run")
    out = folder / "run"
    recipe = tiny_recipe(folder, budgets={METRIC: {"max_drop": 0.0}}, quantization__keep_float={"head": False})
    result = edgekit("export", recipe, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture
def check(capsys):
    """`edgekit check ARGS` through the real entry point, in this process (the subprocess's 1 s of imports, once);
    the end-to-end cases below use the subprocess."""
    from edgekit.cli import main

    def run(*args) -> subprocess.CompletedProcess:
        argv, sys.argv = sys.argv, ["edgekit", "check", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            sys.argv = argv
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _read(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def _write(run: Path, data: dict, reseal: bool = False) -> Path:
    """Write ``data`` as the run's report.json; ``reseal`` recomputes the digest, as a forger would."""
    if reseal:
        data["integrity"]["digest"] = canonical_digest(data)
    path = run / "report.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def _variant(data: dict, name: str) -> dict:
    return next(v for v in data["variants"] if v["name"] == name)


def _reverdict(data: dict) -> None:
    """Rewrite the stored verdicts from the (edited) metrics, as a careful forger would."""
    report = Report.model_validate(data)
    ref = report.variant(report.reference)
    for v in data["variants"]:
        if v["name"] != ref.name and v["status"] == "measured":
            v["budget"] = [b.model_dump(mode="json") for b in evaluate_budgets(ref.metrics, v["metrics"], data["budgets"])]


def test_untouched_copy_passes_and_failing_run_fails(run_copy, failing_run):
    ok = edgekit("check", run_copy / "report.json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "note:" not in ok.stdout + ok.stderr  # sealed, and the run folder is there: nothing skipped
    bad = edgekit("check", failing_run / "report.json")
    assert bad.returncode == 1 and f"{INT8}: {METRIC} dropped" in bad.stderr and "FAIL" in bad.stderr


def _edit_metric(d):
    _variant(d, INT8)["metrics"][METRIC] = _variant(d, REF)["metrics"][METRIC]


def _edit_reference_metric(d):
    _variant(d, REF)["metrics"][METRIC] = _variant(d, INT8)["metrics"][METRIC]


def _edit_budget(d):
    d["budgets"][METRIC] = {"max_drop": 0.5}


def _edit_reference(d):
    d["reference"] = INT8


def _edit_status(d):
    v = _variant(d, INT8)
    v["status"], v["not_built_reason"] = "not_built", "TensorRT is not installed"


def _strip_integrity(d):
    _edit_budget(d)
    del d["integrity"]


EDITS = {
    "metric": (_edit_metric, f"{INT8}'s stored {METRIC} verdict"),
    "reference-metric": (_edit_reference_metric, f"{INT8}'s stored {METRIC} verdict"),
    "budget": (_edit_budget, "differ from the recipe's"),
    "reference": (_edit_reference, f"reference is {INT8} but the rule"),
    "status": (_edit_status, f"{INT8} is 'not_built' but has metrics"),
    "integrity-removed": (_strip_integrity, "without its integrity record"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_failing_report_is_refused_naming_what_differs(failing_run, tmp_path, check, edit):
    """Each edit would turn the honest exit 1 into exit 0; check refuses it (exit 2), naming the digest and the part."""
    change, needle = EDITS[edit]
    run = _copy(failing_run, tmp_path)
    data = _read(run)
    change(data)
    path = _write(run, data)
    result = edgekit("check", path) if edit == "metric" else check(path)  # one end to end, the rest in process
    assert_one_line_error(result, "edited after the run (digest mismatch)", needle, "re-run `edgekit export`")


@pytest.mark.parametrize("edit", ["metric", "budget", "reference", "status"])
def test_forged_digest_still_caught_by_consistency(failing_run, tmp_path, check, edit):
    """A forger who edits and recomputes the digest passes the digest, but not the consistency checks."""
    change, needle = EDITS[edit]
    run = _copy(failing_run, tmp_path)
    data = _read(run)
    change(data)
    result = check(_write(run, data, reseal=True))
    assert_one_line_error(result, "report.json is inconsistent", needle)
    assert "digest mismatch" not in result.stderr


def test_thorough_forgery_is_not_caught(failing_run, tmp_path, check):
    """The limit, stated honestly: the digest is not a signature. Edit a metric, rewrite the stored verdicts to match
    and recompute the digest, and the report is self-consistent: check cannot tell without re-measuring."""
    run = _copy(failing_run, tmp_path)
    data = _read(run)
    _edit_metric(data)
    _reverdict(data)
    result = check(_write(run, data, reseal=True))
    assert result.returncode == 0, result.stdout + result.stderr  # not detected: only re-running export re-measures


def test_replaced_model_bytes_are_refused_naming_the_file(run_copy):
    model = run_copy / "model_int8.onnx"
    model.write_bytes((run_copy / "model_fp32.onnx").read_bytes())  # a valid model, just not the one measured
    result = edgekit("check", run_copy / "report.json")
    assert_one_line_error(result, f"{INT8}: model_int8.onnx does not match its recorded sha256")


def test_deleted_model_file_is_refused(run_copy, check):
    (run_copy / "model_fp32.onnx").unlink()
    result = check(run_copy / "report.json")
    assert_one_line_error(result, f"{REF}: model_fp32.onnx is missing from the run folder")


def test_report_copied_alone_is_checked_without_hashes(tiny_run, tmp_path, check):
    alone = tmp_path / "ci-artifact"
    alone.mkdir()
    shutil.copy(tiny_run / "report.json", alone / "report.json")
    ok = edgekit("check", alone / "report.json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    notes = [line for line in ok.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "run folder not found" in notes[0] and "file hashes not checked" in notes[0]
    data = _read(alone)
    _edit_reference(data)  # the digest and consistency checks still run
    assert_one_line_error(check(_write(alone, data)), "digest mismatch", f"reference is {INT8}")


@pytest.mark.parametrize("value", [0.0, float("nan"), None])
def test_reference_scoring_zero_is_an_error(run_copy, check, value):
    """A reference of 0 (or NaN, or none) on a budgeted metric measured nothing: refused, even in a consistent report."""
    data = _read(run_copy)
    ref = _variant(data, REF)
    if value is None:
        del ref["metrics"][METRIC]
    else:
        ref["metrics"][METRIC] = value
        _variant(data, INT8)["metrics"][METRIC] = value  # 0 -> 0 "drops" nothing: the old gate passed it
    _reverdict(data)
    result = check(_write(run_copy, data, reseal=True))
    what = "has no" if value is None else "scores"
    assert_one_line_error(result, f"reference {REF} {what}", f"budgeted metric {METRIC}", str(run_copy / "report.json"))


def test_old_report_without_digest_is_checked_with_a_note(run_copy, check):
    """A schema 1.1 report (before the digest) is still read: consistency and manifest hashes, and one note."""
    data = _read(run_copy)
    del data["integrity"]
    data["schema_version"] = "1.1"
    ok = check(_write(run_copy, data))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    notes = [line for line in ok.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "carries no digest" in notes[0]
    (run_copy / "model_int8.onnx").write_bytes(b"not a model")  # its manifest sha256 is still checked
    assert_one_line_error(check(run_copy / "report.json"), "model_int8.onnx does not match its recorded sha256")
