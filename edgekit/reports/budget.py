"""The budget gate: how far may a metric drop versus the FP32 reference (higher-is-better metrics)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgekit.errors import EdgekitError
from edgekit.recipe import Budget
from edgekit.reports.schema import BudgetVerdict, Report

EPS = 1e-12


def _as_budget(metric: str, spec: Budget | Mapping[str, Any]) -> Budget:
    if isinstance(spec, Budget):
        return spec
    try:
        return Budget.model_validate(dict(spec))
    except (ValidationError, TypeError, ValueError) as exc:
        raise EdgekitError(
            f"bad budget for metric '{metric}': {spec!r}",
            fix="give exactly one of max_drop (absolute, >= 0) or max_relative_drop (fraction in [0, 1])",
        ) from exc


def _limit_text(limit: float, kind: str) -> str:
    return f"{limit:.4f} (absolute)" if kind == "absolute" else f"{limit:.2%} (relative)"


def _ceiling_verdict(metric: str, reference: float | None, value: float | None, limit: float, available: Mapping[str, float]) -> BudgetVerdict:
    """A lower-is-better metric (a divergence): the variant's value may not exceed ``limit``."""
    if value is None:
        listed = ", ".join(sorted(available)) or "none"
        return BudgetVerdict(metric=metric, reference_value=reference, limit=limit, kind="ceiling", passed=False,
                             message=f"{metric} missing from variant metrics (have: {listed}), budget max value {limit:.4f}: FAIL")
    value = float(value)
    passed = not math.isnan(value) and value <= limit + EPS
    return BudgetVerdict(metric=metric, reference_value=reference, value=value, limit=limit, kind="ceiling", passed=passed,
                         message=f"{metric} is {value:.4f}, budget max value {limit:.4f}: {'PASS' if passed else 'FAIL'}")


def _verdict(metric: str, reference: float | None, value: float | None, budget: Budget, available: Mapping[str, float], ref_available: Mapping[str, float]) -> BudgetVerdict:
    if budget.max_value is not None:
        return _ceiling_verdict(metric, reference, value, float(budget.max_value), available)
    kind = "absolute" if budget.max_drop is not None else "relative"
    limit = float(budget.max_drop if kind == "absolute" else budget.max_relative_drop)
    limit_text = _limit_text(limit, kind)
    if reference is None or value is None:
        where, have = ("reference", ref_available) if reference is None else ("variant", available)
        listed = ", ".join(sorted(have)) or "none"
        return BudgetVerdict(
            metric=metric, reference_value=reference, value=value, limit=limit, kind=kind, passed=False,
            message=f"{metric} missing from {where} metrics (have: {listed}), budget {limit_text}: FAIL",
        )
    reference, value = float(reference), float(value)
    drop = reference - value
    relative = drop / abs(reference) if reference != 0 else None
    if math.isnan(drop):
        passed = False
    elif kind == "absolute":
        passed = drop <= limit + EPS
    elif relative is None:  # reference 0: any drop at all is infinitely large relative to it
        passed = drop <= 0
    else:
        passed = relative <= limit + EPS
    shown = f"{drop:.4f}" if kind == "absolute" or relative is None else f"{drop:.4f} = {relative:.2%}"
    message = f"{metric} dropped {shown} ({reference:.4f} -> {value:.4f}), budget {limit_text}: {'PASS' if passed else 'FAIL'}"
    return BudgetVerdict(
        metric=metric, reference_value=reference, value=value, drop=drop, relative_drop=relative,
        limit=limit, kind=kind, passed=passed, message=message,
    )


def evaluate_budgets(
    reference_metrics: Mapping[str, float],
    metrics: Mapping[str, float],
    budgets: Mapping[str, Budget | Mapping[str, Any]],
) -> list[BudgetVerdict]:
    """One verdict per budgeted metric, in budget order. A metric missing on either side fails.

    drop = reference - value; absolute passes iff drop <= max_drop, relative iff drop / reference <= max_relative_drop
    (a reference of 0 passes only when nothing dropped); a ceiling passes iff value <= max_value (NaN fails).
    Boundaries pass, with a 1e-12 tolerance for float noise.
    """
    reference_metrics, metrics = reference_metrics or {}, metrics or {}
    out = []
    for metric, spec in (budgets or {}).items():
        budget = _as_budget(metric, spec)
        out.append(_verdict(metric, reference_metrics.get(metric), metrics.get(metric), budget, metrics, reference_metrics))
    return out


def check_reference(report: Report, source: str | Path | None = None) -> None:
    """A reference that scores 0, NaN or nothing on a budgeted drop metric measured nothing (no ground truth, an
    empty evaluation set): every drop against it is meaningless, so it is an error, not a pass. Ceilings (a
    divergence, whose reference value is 0 by definition) are exempt."""
    reference = report.variant(report.reference)
    if reference is None:
        names = ", ".join(v.name for v in report.variants) or "none"
        raise EdgekitError(
            f"reference variant '{report.reference}' is not in the report (variants: {names})", source,
            fix="re-run `edgekit export` with an fp32 target so budgets have a reference",
        )
    for metric, spec in report.budgets.items():
        if _as_budget(metric, spec).max_value is not None:
            continue
        value = reference.metrics.get(metric)
        if value is None or math.isnan(value) or value == 0:
            what = "has no" if value is None else f"scores {value} on"
            raise EdgekitError(
                f"reference {reference.name} {what} budgeted metric {metric}: nothing was measured, so no drop can be judged", source,
                fix="check the evaluation data (images, ground-truth annotations) and re-run `edgekit export`",
            )


def check_report(report: Report, require_all: bool = False, source: str | Path | None = None) -> tuple[bool, list[str]]:
    """Recompute every budget verdict from the stored metrics (stored verdicts are not trusted).

    Returns ``(ok, lines)`` with one line per verdict, prefixed by the variant name. A target that could not be
    built here (TensorRT without a GPU) is listed as SKIPPED and does not fail the check; ``require_all`` makes it
    fail. A reference missing from the report, or scoring 0 / NaN / nothing on a budgeted metric, is an
    ``EdgekitError`` naming ``source`` (see :func:`check_reference`). The report's integrity is checked apart, by
    :func:`edgekit.reports.verify.verify_report`.
    """
    if not report.budgets:
        return True, ["no budgets defined in the report's recipe: nothing to check"]
    check_reference(report, source)
    reference = report.variant(report.reference)
    others = [v for v in report.variants if v is not reference and v.status == "measured"]
    skipped = [f"{v.name}: SKIPPED, not built ({v.not_built_reason})" for v in report.variants if v.status != "measured"]
    if not others:
        return not (require_all and skipped), [f"only the reference variant {reference.name} is in the report: nothing to check", *skipped]
    ok, lines = not (require_all and skipped), list(skipped)
    for variant in others:
        for verdict in evaluate_budgets(reference.metrics, variant.metrics, report.budgets):
            ok = ok and verdict.passed
            lines.append(f"{variant.name}: {verdict.message}")
    return ok, lines
