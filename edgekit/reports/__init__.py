"""Reports: the schema of report.json, the budget gate, the integrity check and the JSON + markdown writer."""

from edgekit.reports.budget import check_reference, check_report, evaluate_budgets
from edgekit.reports.schema import (
    SCHEMA_VERSION,
    BudgetVerdict,
    Integrity,
    LatencyMs,
    Report,
    Variant,
    load_report,
    report_file,
)
from edgekit.reports.verify import verify_report
from edgekit.reports.writer import device_summary, render_markdown, report_json, write_report

__all__ = [
    "SCHEMA_VERSION",
    "BudgetVerdict",
    "Integrity",
    "LatencyMs",
    "Report",
    "Variant",
    "check_reference",
    "check_report",
    "device_summary",
    "evaluate_budgets",
    "load_report",
    "render_markdown",
    "report_file",
    "report_json",
    "verify_report",
    "write_report",
]
