"""``edgekit check`` does not trust ``report.json``: before the budget gate it verifies that the report is the one
the run wrote, and that it agrees with itself and with the run folder beside it.

1. The digest (schema 1.2 on): sha256 over the report's canonical JSON, ``integrity.digest`` left out. Any edit of
   the report after the run (a metric, a budget, the reference, a status, a file hash) changes it.
2. Consistency, whether or not a digest is there: the budgets are the recipe's (``recipe.content.budgets``); the
   variants are the recipe's targets, in order; the reference is what :func:`edgekit.targets.reference_target` (the one
   rule) picks from them; a ``measured`` variant has metrics and artifact hashes, a ``not_built`` one has neither;
   the budget verdicts stored at write time agree with the metrics stored beside them.
3. Files, when the run folder is present (the report's folder holds the files it names): every file the report
   names is there and hashes to its recorded sha256. A report copied alone (a CI artifact) skips this with a note.

What this guards against, and what not: the digest is not a signature. Whoever can edit ``report.json`` can
recompute it (it is a plain sha256, no secret), so it detects edits, not forgery. The consistency checks still
catch a forged report whose parts disagree (a metric edited without its stored verdict, a reference or status that
breaks the rule); a forger who rewrites metrics, verdicts and digest together is not caught, and neither is one
who replaces a model file and rewrites its hashes and the digest. Only re-running ``edgekit export`` (or
``edgekit eval`` on the model files) re-measures.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.reports.schema import INTEGRITY_SINCE, Report, report_file

_FIX_RERUN = "re-run `edgekit export` to regenerate the report"


# --- the digest and the files a report names (also used by the writer) ---------------------------------------


def canonical_digest(data: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, NaN kept) of ``data`` without ``integrity.digest``."""
    body = dict(data)
    if isinstance(body.get("integrity"), Mapping):
        body["integrity"] = {k: v for k, v in body["integrity"].items() if k != "digest"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def named_files(report: Report) -> dict[str, list[str]]:
    """Every file the report names (model paths, each variant's files, each graph's file) -> the variants naming it."""
    out: dict[str, list[str]] = {}
    for v in report.variants:
        for rel in [v.model_path, *v.files, *(c.model_path for c in v.components.values())]:
            if rel and v.name not in out.setdefault(rel, []):
                out[rel].append(v.name)
    return out


def manifest_hashes(report: Report) -> dict[str, list[tuple[str, str]]]:
    """The artifact sha256s the manifests and components record: file -> [(variant, sha256)]."""
    out: dict[str, list[tuple[str, str]]] = {}
    for v in report.variants:
        sha = v.manifest.get("artifact_sha256")
        pairs = []
        if isinstance(sha, str) and v.model_path:
            pairs.append((v.model_path, sha))
        for graph, c in v.components.items():
            graph_sha = sha.get(graph) if isinstance(sha, dict) else None
            pairs += [(c.model_path, h) for h in (c.artifact_sha256, graph_sha) if h and c.model_path]
        for rel, h in pairs:
            if (v.name, h) not in out.setdefault(rel, []):
                out[rel].append((v.name, h))
    return out


# --- checks -------------------------------------------------------------------------------------------------


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _normal_budgets(budgets: Any) -> Any:
    """Budgets as ``metric -> {key: value}`` without the unset (None) keys, for comparing the report's with the recipe's."""
    if not isinstance(budgets, Mapping):
        return budgets
    return {m: ({k: v for k, v in b.items() if v is not None} if isinstance(b, Mapping) else b) for m, b in budgets.items()}


def _targets(report: Report) -> tuple[list, list[str]]:
    """The recipe's targets (``Target`` values, not re-validated: a plugin backend may be missing where the report
    is checked), or, without them in the report, the variants' own backend and precision."""
    from edgekit.targets import Target

    problems: list[str] = []
    listed = (report.recipe.get("content") or {}).get("targets")
    if isinstance(listed, list) and listed:
        targets = [Target.model_construct(**(Target.fields_of(t) if isinstance(t, str) else dict(t))) for t in listed]
        names, have = [t.name for t in targets], [v.name for v in report.variants]
        if names != have:
            problems.append(f"variants ({', '.join(have)}) are not the recipe's targets ({', '.join(names)})")
        return targets, problems
    targets = [Target.model_construct(backend=v.backend, precision=v.precision, accuracy_control=v.name.endswith("+ac")) for v in report.variants]
    return targets, problems


def _reference_problems(report: Report) -> list[str]:
    """The reference must be the one :func:`edgekit.targets.reference_target` picks from the variants' statuses."""
    from edgekit.backends.base import Built
    from edgekit.targets import reference_target

    targets, problems = _targets(report)
    if problems or not targets:
        return problems
    built = {}
    for t, v in zip(targets, report.variants):
        built[t] = {"model": Built(None, v.precision, not_built=None if v.status == "measured" else (v.not_built_reason or "not built"))}
    expected = reference_target(targets, built).name
    if report.reference != expected:
        problems.append(f"reference is {report.reference} but the rule (first built fp32 target, ONNX Runtime first) gives {expected}")
    return problems


def _status_problems(report: Report) -> list[str]:
    problems = []
    for v in report.variants:
        sha = v.manifest.get("artifact_sha256")
        if v.status == "measured":
            hashed = bool(sha) and (all(sha.values()) if isinstance(sha, dict) else True)
            missing = [what for what, bad in (("metrics", not v.metrics), ("a model file", not v.model_path), ("artifact sha256", not hashed)) if bad]
            if missing:
                problems.append(f"{v.name} is 'measured' but has no {' or '.join(missing)}")
            if v.not_built_reason:
                problems.append(f"{v.name} is 'measured' but carries a not-built reason ({v.not_built_reason})")
        elif v.status == "simulated":  # accuracy without an engine: metrics, never a latency
            if not v.metrics or v.latency_ms is not None or not v.simulated_how:
                problems.append(f"{v.name} is 'simulated' but has {'no metrics' if not v.metrics else 'a latency' if v.latency_ms else 'no method'}")
            if not v.not_built_reason:
                problems.append(f"{v.name} is 'simulated' without the reason its engine was not built")
        else:
            if v.metrics or v.latency_ms is not None or v.budget:
                problems.append(f"{v.name} is '{v.status}' but has metrics, latency or budget verdicts")
            if not v.not_built_reason:
                problems.append(f"{v.name} is '{v.status}' without a reason")
    return problems


def _verdict_problems(report: Report, require_stored: bool) -> list[str]:
    """The verdicts stored at write time must match the ones recomputed from the metrics stored beside them."""
    from edgekit.reports.budget import evaluate_budgets

    ref = report.variant(report.reference)
    if ref is None or not report.budgets:
        return []
    problems = []
    for v in report.variants:
        if v is ref or v.status == "not_built" or (not v.budget and not require_stored):
            continue
        try:
            fresh = evaluate_budgets(ref.metrics, v.metrics, report.budgets)
        except EdgekitError:
            return []  # a bad budget: the gate itself reports it
        stored = {b.metric: b for b in v.budget}
        for b in fresh:
            s = stored.get(b.metric)
            if s is None:
                problems.append(f"{v.name} has no stored verdict for {b.metric}")
            elif not (_same(s.value, b.value) and _same(s.reference_value, b.reference_value) and s.passed == b.passed and _same(s.limit, b.limit)):
                problems.append(f"{v.name}'s stored {b.metric} verdict ({s.reference_value} -> {s.value}, limit {s.limit}, "
                                f"{'PASS' if s.passed else 'FAIL'}) disagrees with the metrics ({b.reference_value} -> {b.value}, limit {b.limit}, "
                                f"{'PASS' if b.passed else 'FAIL'})")
        problems += [p for b in v.budget for p in _interval_problems(v.name, b)]
        extra = sorted(set(stored) - {b.metric for b in fresh})
        if extra:
            problems.append(f"{v.name} has stored verdicts for unbudgeted metrics ({', '.join(extra)})")
    return problems


def _interval_problems(name: str, b) -> list[str]:
    """A stored bootstrap interval (schema 1.3) must agree with its own quantiles, width rule and sample estimate.
    Only the point verdicts are recomputed from the metrics: the interval comes from per-sample data the report
    does not hold, so it is checked for coherence here and guarded by the digest."""
    from edgekit.evaluators.bootstrap import samples_needed
    from edgekit.reports.budget import EPS, confidence_key

    if b.interval is None:
        return []
    where = f"{name}'s stored {b.metric} interval"
    if len(b.interval) != 2 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in b.interval) or b.interval[0] > b.interval[1]:
        return [f"{where} {b.interval} is not [low, high]"]
    if b.confidence is None or not 0 < b.confidence < 1 or not b.resamples or not b.sample_count:
        return [f"{where} lacks its confidence, resamples or sample count"]
    low, high = b.interval
    q = b.quantiles or {}
    lo_key = f"{round((1 - b.confidence) / 2, 4):g}"
    if not (_same(q.get(lo_key), low) and _same(q.get(confidence_key(b.confidence)), high)):
        return [f"{where} [{low}, {high}] disagrees with its quantiles ({q.get(lo_key)}, {q.get(confidence_key(b.confidence))})"]
    width = high - low
    if b.resolvable is not (width <= 2 * b.limit + EPS) or b.samples_needed != samples_needed(b.sample_count, width, b.limit):
        return [f"{where} (width {width:.6g}) disagrees with its resolvable / samples_needed fields"]
    return []


def consistency_problems(report: Report, require_stored_verdicts: bool = False) -> list[str]:
    """What in the report disagrees with itself: budgets vs recipe, variants vs targets, reference vs the rule,
    statuses vs their contents, stored verdicts vs metrics. Needs no files."""
    problems = []
    content = report.recipe.get("content") or {}
    recipe_budgets = _normal_budgets(content.get("budgets") or {})
    if _normal_budgets(report.budgets) != recipe_budgets:
        problems.append(f"budgets {json.dumps(report.budgets, sort_keys=True)} differ from the recipe's {json.dumps(recipe_budgets, sort_keys=True)}")
    problems += _reference_problems(report)
    problems += _status_problems(report)
    problems += _verdict_problems(report, require_stored_verdicts)
    return problems


def _unsafe(rel: str) -> bool:
    p = PurePosixPath(rel.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(rel) > 1 and rel[1] == ":")


def file_problems(report: Report, folder: Path) -> tuple[list[str], list[str]]:
    """Re-hash every file the report names in ``folder``: ``(problems, notes)``. A folder holding none of them is
    not the run folder: hashes are skipped with a note."""
    from edgekit.artifacts import sha256_file

    named = named_files(report)
    expected: dict[str, list[tuple[str, str]]] = {rel: [("integrity record", h)] for rel, h in (report.integrity.files if report.integrity else {}).items()}
    for rel, pairs in manifest_hashes(report).items():
        expected.setdefault(rel, []).extend(pairs)
    problems, notes = [], []
    every = list(dict.fromkeys([*named, *expected]))
    unsafe = [rel for rel in every if _unsafe(rel)]
    if unsafe:
        return [f"names files outside the run folder ({', '.join(unsafe)})"], notes
    for rel, pairs in expected.items():
        if len({h for _, h in pairs}) > 1:
            problems.append(f"{rel}: recorded sha256s disagree (" + ", ".join(f"{who} {h[:12]}" for who, h in pairs) + ")")
    if report.integrity is not None:
        unrecorded = [rel for rel in named if rel not in report.integrity.files]
        if unrecorded:
            problems.append(f"names files without a recorded sha256 ({', '.join(unrecorded)})")
    if not any((folder / rel).is_file() for rel in every):
        notes.append(f"run folder not found ({folder} holds none of the {len(every)} files the report names): file hashes not checked")
        return problems, notes

    def who(rel: str) -> str:
        names = named.get(rel) or [w for w, _ in expected.get(rel, []) if w != "integrity record"]
        return ", ".join(names) + ": " if names else ""

    for rel in every:
        path = folder / rel
        if not path.is_file():
            problems.append(f"{who(rel)}{rel} is missing from the run folder")
            continue
        hashes = {h for _, h in expected.get(rel, [])}
        if hashes and sha256_file(path) not in hashes:
            problems.append(f"{who(rel)}{rel} does not match its recorded sha256 (changed after the run)")
    if report.integrity is None:
        unhashed = [rel for rel in named if rel not in expected]
        if unhashed:
            notes.append(f"no sha256 recorded for {', '.join(unhashed)} (report written before schema 1.2): present, not hashed")
    return problems, notes


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return (0,)


def verify_report(report: Report, path: str | Path) -> list[str]:
    """Refuse a report that was edited after the run or disagrees with itself or with its run folder: one
    ``EdgekitError`` (exit 2) naming every difference found. Returns the notes to print (no digest in an old
    report; run folder absent, so no file hashes)."""
    path = report_file(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:  # load_report read it a moment ago
        raise EdgekitError(f"cannot re-read the report: {exc}", path, _FIX_RERUN) from exc
    notes: list[str] = []
    problems = consistency_problems(report, require_stored_verdicts=report.integrity is not None)
    more, file_notes = file_problems(report, path.parent)
    problems += more
    notes += file_notes
    digest_bad = False
    if report.integrity is None:
        if _version(report.schema_version) >= INTEGRITY_SINCE:
            problems.insert(0, f"schema {report.schema_version} report without its integrity record (removed after the run)")
            digest_bad = True
        else:
            notes.insert(0, f"{path.name} (schema {report.schema_version}) carries no digest: edits to it cannot be detected, only inconsistencies")
    elif canonical_digest(raw) != report.integrity.digest:
        digest_bad = True
    if digest_bad or problems:
        head = f"{path.name} was edited after the run (digest mismatch)" if digest_bad else f"{path.name} is inconsistent"
        raise EdgekitError(head + (": " + "; ".join(problems) if problems else ""), path, _FIX_RERUN)
    return notes
