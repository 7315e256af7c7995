"""Reports: the schema of report.json, the budget gate, and the JSON + markdown writer."""

from edgekit.reports.budget import check_report, evaluate_budgets
from edgekit.reports.schema import SCHEMA_VERSION, BudgetVerdict, LatencyMs, Report, Variant, load_report
from edgekit.reports.writer import device_summary, render_markdown, report_json, write_report

__all__ = [
    "SCHEMA_VERSION",
    "BudgetVerdict",
    "LatencyMs",
    "Report",
    "Variant",
    "check_report",
    "device_summary",
    "evaluate_budgets",
    "load_report",
    "render_markdown",
    "report_json",
    "write_report",
]
