"""A report's verdicts in the forms CI systems read: a JSON summary for scripts, JUnit XML, GitHub Actions
workflow commands and a Markdown job summary. One test case per variant x budget, named ``variant / metric``."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from edgekit.reports.schema import Report


def report_summary(report: Report, path: str | Path) -> dict[str, Any]:
    """What a script needs from a run: per variant its status, metrics, median latency, size and budget verdicts."""
    return {
        "report": str(path),
        "recipe": report.recipe.get("name"),
        "reference": report.reference,
        "device": {k: report.device.get(k) for k in ("cpu_model", "logical_cores", "isa_flags", "gpus", "jetson_model", "power_mode") if k in report.device},
        "passed": all(b.passed for v in report.variants for b in v.budget),
        "variants": [{
            "name": v.name, "status": v.status, "simulated_how": v.simulated_how, "metrics": v.metrics,
            "latency_median_ms": v.latency_ms.median if v.latency_ms else None, "size_bytes": v.size_bytes,
            "budget": [{"metric": b.metric, "drop": b.drop, "limit": b.limit, "kind": b.kind, "passed": b.passed,
                        "interval": b.interval} for b in v.budget],
            "not_built_reason": v.not_built_reason,
        } for v in report.variants],
    }


def _cases(report: Report, require_all: bool, confidence: float | None = None) -> list[tuple[str, str, str | None, str | None, str]]:
    """(variant, metric, failure or None, skip reason or None, verdict text) for every budget of every variant,
    recomputed from the stored metrics exactly as ``edgekit check`` does (stored verdicts are not trusted)."""
    from edgekit.reports.budget import recomputed_verdicts, verdict_lines

    reference = report.variant(report.reference)
    cases = []
    for v in report.variants:
        if v is reference:
            continue
        if v.status == "not_built":
            reason = f"{v.name}: not built here ({v.not_built_reason or 'no reason recorded'})"
            cases += [(v.name, m, reason if require_all else None, None if require_all else reason, reason) for m in report.budgets]
            continue
        for verdict in recomputed_verdicts(report, v):
            passed, lines = verdict_lines(verdict, confidence)
            text = "\n".join(f"{v.name}: {line}" for line in lines)
            cases.append((v.name, verdict.metric, None if passed else text, None, text))
    return cases


def junit_xml(report: Report, require_all: bool = False, confidence: float | None = None) -> bytes:
    """JUnit XML (the schema Jenkins, GitLab and GitHub test reporters read): a suite per recipe, a case per
    variant x budget; a failed budget is a ``<failure>`` whose message names the metric, the drop and the budget."""
    cases = _cases(report, require_all, confidence)
    suite = ET.Element("testsuite", name=f"edgekit.{report.recipe.get('name', 'recipe')}", tests=str(len(cases)),
                       failures=str(sum(1 for c in cases if c[2])), skipped=str(sum(1 for c in cases if c[3])), errors="0")
    for variant, metric, failure, skip, text in cases:
        case = ET.SubElement(suite, "testcase", classname=f"edgekit.{variant}", name=metric)
        if failure:
            ET.SubElement(case, "failure", message=failure.splitlines()[0], type="budget").text = failure
        elif skip:
            ET.SubElement(case, "skipped", message=skip)
        else:
            ET.SubElement(case, "system-out").text = text
    root = ET.Element("testsuites", name="edgekit check")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _escape_command(text: str) -> str:
    """GitHub workflow-command data escaping (%, CR, LF)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_command(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(report: Report, recipe_path: str | None, require_all: bool = False, confidence: float | None = None) -> list[str]:
    """``::error`` workflow commands for failed budgets (attached to the recipe file when known) and one
    ``::warning`` per target not built."""
    where = f"file={_escape_property(recipe_path)}," if recipe_path else ""
    lines, warned = [], set()
    for variant, metric, failure, skip, _ in _cases(report, require_all, confidence):
        if failure:
            lines.append(f"::error {where}title={_escape_property(f'edgekit budget {variant} {metric}')}::{_escape_command(failure)}")
        elif skip and variant not in warned:
            warned.add(variant)
            lines.append(f"::warning title={_escape_property(f'edgekit {variant} not built')}::{_escape_command(skip)}")
    return lines


def markdown_summary(report: Report, require_all: bool = False, confidence: float | None = None) -> str:
    """The GitHub job summary: one row per variant x budget (recomputed, as ``check`` does) and the device."""
    rows = ["| variant | metric | verdict |", "|---|---|---|"]
    for variant, metric, failure, skip, text in _cases(report, require_all, confidence):
        verdict = "**FAIL**" if failure else "skipped" if skip else "PASS"
        detail = text.splitlines()[0].split(": ", 1)[-1]
        rows.append(f"| {variant} | {metric} | {verdict}: {detail.replace('|', '/')} |")
    device = report.device
    head = (f"## edgekit check: {report.recipe.get('name', '')}\n\nMeasured on {device.get('cpu_model', 'an unrecorded CPU')}, "
            f"{device.get('logical_cores', '?')} logical cores; reference {report.reference}.")
    return "\n".join([head, "", *rows]) + "\n"
