"""The budget gate: how far may a metric drop versus the FP32 reference (higher-is-better metrics)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
    reference_samples: Mapping[str, Any] | None = None,
    samples: Mapping[str, Any] | None = None,
    resamples: int | None = None,
    seed: int | None = None,
    confidence: float | None = None,
) -> list[BudgetVerdict]:
    """One verdict per budgeted metric, in budget order. A metric missing on either side fails.

    drop = reference - value; absolute passes iff drop <= max_drop, relative iff drop / reference <= max_relative_drop
    (a reference of 0 passes only when nothing dropped); a ceiling passes iff value <= max_value (NaN fails).
    Boundaries pass, with a 1e-12 tolerance for float noise.

    With ``samples`` (metric -> :class:`edgekit.evaluators.bootstrap.Samples` of the variant) and
    ``reference_samples`` (the reference's), each verdict also carries the paired bootstrap interval of what it gates
    (see :func:`attach_interval`); the pass/fail verdict is still the point value's.
    """
    reference_metrics, metrics = reference_metrics or {}, metrics or {}
    out = []
    for metric, spec in (budgets or {}).items():
        budget = _as_budget(metric, spec)
        verdict = _verdict(metric, reference_metrics.get(metric), metrics.get(metric), budget, metrics, reference_metrics)
        if samples is not None:
            attach_interval(verdict, (reference_samples or {}).get(metric), samples.get(metric), resamples, seed, confidence)
        out.append(verdict)
    return out


# --- bootstrap intervals --------------------------------------------------------------------------------------

INTERVAL_FIELDS = ("interval", "confidence", "quantiles", "resamples", "seed", "sample_count", "sample_unit", "resolvable", "samples_needed", "interval_note")


def attach_interval(verdict: BudgetVerdict, reference, variant, resamples: int | None = None, seed: int | None = None,
                    confidence: float | None = None) -> BudgetVerdict:
    """Fill ``verdict``'s interval fields from the paired bootstrap of the reference's and the variant's per-sample
    data (a ceiling needs only the variant's), or its ``interval_note`` saying why there is none.

    ``resolvable``: the interval is at most twice the budget wide (half-width <= budget), so a variant that truly
    lost nothing would clear the budget at that confidence; ``samples_needed``: ``n * (width / (2 * limit))**2``
    rounded up, the width shrinking as ``1/sqrt(n)``. A relative budget is compared with the interval of the
    relative drop, a ceiling with the interval of the variant's value (a divergence, 0 at best).
    """
    from edgekit.evaluators.bootstrap import (
        DEFAULT_CONFIDENCE,
        DEFAULT_RESAMPLES,
        DEFAULT_SEED,
        paired_interval,
        samples_needed,
    )

    if variant is None or (verdict.kind != "ceiling" and reference is None):
        verdict.interval_note = "no interval: the family gives no per-sample values for this metric"
        return verdict
    if verdict.value is None or (verdict.kind != "ceiling" and verdict.reference_value is None):
        verdict.interval_note = "no interval: the metric is missing"
        return verdict
    try:
        iv = paired_interval(reference, variant, verdict.kind, resamples or DEFAULT_RESAMPLES, DEFAULT_SEED if seed is None else seed,
                             confidence or DEFAULT_CONFIDENCE)
    except ValueError as exc:
        verdict.interval_note = f"no interval: {exc}"
        return verdict
    if not (math.isfinite(iv.low) and math.isfinite(iv.high)):
        verdict.interval_note = "no interval: the metric is undefined on some resamples"
        return verdict
    verdict.interval, verdict.confidence, verdict.quantiles = [iv.low, iv.high], iv.confidence, iv.quantiles
    verdict.resamples, verdict.seed, verdict.sample_count, verdict.sample_unit = iv.resamples, iv.seed, iv.n, iv.unit
    verdict.resolvable = iv.width <= 2 * verdict.limit + EPS
    verdict.samples_needed = samples_needed(iv.n, iv.width, verdict.limit)
    return verdict


def copy_interval(fresh: BudgetVerdict, stored: BudgetVerdict | None) -> BudgetVerdict:
    """``fresh`` (recomputed from the metrics) with the interval fields of the verdict stored at write time."""
    if stored is not None:
        for name in INTERVAL_FIELDS:
            setattr(fresh, name, getattr(stored, name))
    return fresh


def _quantity(v: BudgetVerdict) -> str:
    return {"absolute": "drop", "relative": "relative drop", "ceiling": "value"}[v.kind]


def _fmt(v: BudgetVerdict, x: float) -> str:
    return f"{x:.2%}" if v.kind == "relative" else f"{x:.4f}"


def interval_text(v: BudgetVerdict) -> str:
    """"95% interval of the drop 0.0016 to 0.0171 (1000 paired resamples of 158 images)", or the reason for none."""
    if v.interval is None:
        return v.interval_note or "no interval"
    low, high = v.interval
    paired = "" if v.kind == "ceiling" else "paired "
    return (f"{v.confidence:.0%} interval of the {_quantity(v)} {_fmt(v, low)} to {_fmt(v, high)} "
            f"({v.resamples} {paired}resamples of {v.sample_count} {v.sample_unit})")


def _budget_words(v: BudgetVerdict) -> str:
    if v.kind == "relative":
        return f"a {v.limit:.2%} relative budget"
    if v.kind == "ceiling":
        return f"a {v.limit:g} ceiling"
    return f"a {v.limit:g} budget"


def resolution_line(v: BudgetVerdict) -> str | None:
    """When the interval is wider than twice the budget: "mAP50-95: the evaluation set (158 images) cannot resolve a
    0.005 budget (95% interval width 0.012); about 913 images would"."""
    if v.resolvable is not False or v.interval is None:
        return None
    width = v.interval[1] - v.interval[0]
    need = f"about {v.samples_needed} {v.sample_unit} would" if v.samples_needed else "no finite set would"
    shown = f"{width:.2%}" if v.kind == "relative" else f"{width:.3g}"
    return (f"{v.metric}: the evaluation set ({v.sample_count} {v.sample_unit}) cannot resolve {_budget_words(v)} "
            f"({v.confidence:.0%} interval width {shown}); {need}")


def confidence_key(confidence: float) -> str:
    """The ``quantiles`` key of the upper bound of a two-sided interval at ``confidence`` (0.95 -> "0.975")."""
    return f"{round((1 + confidence) / 2, 4):g}"


def check_confidence(confidence: float, report: Report | None = None, source: str | Path | None = None) -> None:
    """Refuse a confidence whose bound the reports do not store, and a report written before intervals (schema < 1.3)."""
    from edgekit.evaluators.bootstrap import CONFIDENCES

    if not any(abs(confidence - c) < 1e-9 for c in CONFIDENCES):
        raise EdgekitError(f"--confidence {confidence:g}: reports store interval bounds at {', '.join(f'{c:g}' for c in CONFIDENCES)} only",
                           source, fix=f"use one of {', '.join(f'{c:g}' for c in CONFIDENCES)}")
    if report is not None:
        from edgekit.reports.schema import INTERVALS_SINCE

        try:
            version = tuple(int(p) for p in report.schema_version.split("."))
        except ValueError:
            version = (0,)
        if version < INTERVALS_SINCE:
            raise EdgekitError(f"the report (schema {report.schema_version}) carries no bootstrap intervals, so it cannot be gated at a confidence",
                               source, fix="re-run `edgekit export` (schema 1.3 on), or check without --confidence")


def gate_at_confidence(v: BudgetVerdict, confidence: float) -> tuple[bool, str]:
    """Pass iff the point verdict passes and the interval's upper bound at ``confidence`` is within the budget;
    the text says which bound was compared ("upper bound of the drop 0.0102 > 0.0050 at 95% confidence")."""
    bound = (v.quantiles or {}).get(confidence_key(confidence)) if v.interval is not None else None
    if bound is None:
        return False, f"no interval to hold at {confidence:.0%} confidence"
    sign = "<=" if bound <= v.limit + EPS else ">"
    shown = f"{v.limit:.2%}" if v.kind == "relative" else f"{v.limit:.4f}"
    return v.passed and sign == "<=", f"upper bound of the {_quantity(v)} {_fmt(v, bound)} {sign} {shown} at {confidence:.0%} confidence"


def verdict_lines(v: BudgetVerdict, confidence: float | None = None) -> tuple[bool, list[str]]:
    """``(passed, lines)``: the point verdict's message as ever (ending in its PASS / FAIL), then its interval
    ("mAP50-95: 95% interval of the drop ...", and with ``confidence`` the bound gated on and the verdict at that
    confidence), then the line saying the set cannot resolve the budget, when it cannot."""
    passed, lines = v.passed, [v.message]
    if v.interval is not None or v.interval_note or confidence is not None:
        line = f"{v.metric}: {interval_text(v)}"
        if confidence is not None:
            passed, text = gate_at_confidence(v, confidence)
            line += f"; {text}: {'PASS' if passed else 'FAIL'}"
        lines.append(line)
    if note := resolution_line(v):
        lines.append(note)
    return passed, lines


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


def recomputed_verdicts(report: Report, variant) -> list[BudgetVerdict]:
    """``variant``'s verdicts recomputed from the stored metrics (stored verdicts are not trusted), each with the
    bootstrap interval stored at write time."""
    stored = {b.metric: b for b in variant.budget}
    reference = report.variant(report.reference)
    return [copy_interval(v, stored.get(v.metric)) for v in evaluate_budgets(reference.metrics, variant.metrics, report.budgets)]


@dataclass(frozen=True)
class BudgetCell:
    """The budget column of one variant in a variants table, decided once for the console, report.md and
    report.html: ``state`` is ``not built``, ``reference``, ``none`` (no budgets), ``PASS`` or ``FAIL``."""

    state: Literal["not built", "reference", "none", "PASS", "FAIL"]
    failed: tuple[str, ...] = ()
    simulated: bool = False  # the verdict is on a CPU simulation of the engine (TensorRT without TensorRT)


def budget_cell(report: Report, variant) -> BudgetCell:
    """:class:`BudgetCell` of ``variant``, from the recomputed verdicts (stored verdicts are not trusted)."""
    reference = report.variant(report.reference)
    if variant.status == "not_built":
        return BudgetCell("not built")
    if variant is reference:
        return BudgetCell("reference")
    if not report.budgets or reference is None:
        return BudgetCell("none")
    failed = tuple(b.metric for b in recomputed_verdicts(report, variant) if not b.passed)
    return BudgetCell("FAIL" if failed else "PASS", failed, variant.status == "simulated")


def check_report(report: Report, require_all: bool = False, source: str | Path | None = None, confidence: float | None = None) -> tuple[bool, list[str]]:
    """Recompute every budget verdict from the stored metrics (stored verdicts are not trusted).

    Each line also shows the bootstrap interval stored with the verdict (schema 1.3; the report's digest covers it),
    and a budget the evaluation set cannot resolve gets a line of its own (:func:`resolution_line`). With
    ``confidence`` (one of :data:`edgekit.evaluators.bootstrap.CONFIDENCES`), a verdict passes only when the point
    value does and the interval's upper bound at that confidence is within the budget as well; a metric without an
    interval then fails.

    Returns ``(ok, lines)`` with one line per verdict, prefixed by the variant name. A target that could not be
    built here (TensorRT without a GPU) is listed as SKIPPED and does not fail the check; ``require_all`` makes it
    fail. A reference missing from the report, or scoring 0 / NaN / nothing on a budgeted metric, is an
    ``EdgekitError`` naming ``source`` (see :func:`check_reference`). The report's integrity is checked apart, by
    :func:`edgekit.reports.verify.verify_report`.
    """
    if not report.budgets:
        return True, ["no budgets defined in the report's recipe: nothing to check"]
    if confidence is not None:
        check_confidence(confidence, report, source)
    check_reference(report, source)
    reference = report.variant(report.reference)
    others = [v for v in report.variants if v is not reference and v.status in ("measured", "simulated")]
    skipped = [f"{v.name}: SKIPPED, not built ({v.not_built_reason})" for v in report.variants if v.status == "not_built"]
    if not others:
        return not (require_all and skipped), [f"only the reference variant {reference.name} is in the report: nothing to check", *skipped]
    ok, lines = not (require_all and skipped), list(skipped)
    for variant in others:
        for verdict in recomputed_verdicts(report, variant):
            passed, more = verdict_lines(verdict, confidence)
            ok = ok and passed
            lines += [f"{variant.name}: {line}" for line in more]
        if variant.status == "simulated":
            lines.append(f"{variant.name}: {variant.simulated_how}")
    return ok, lines
