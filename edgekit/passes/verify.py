"""Configured passes + onnxslim, checked against the unfused model in ONNX Runtime (CPU): ``fuse_graph``.

Pass entries (recipe ``export.passes``) are a name or ``{name: {option: value}}``; options go to the pass's typed config.

Verification rule: for every feed and every output, ``max|fused - ref| <= tolerance * max(1, max|ref|)`` where
``max|ref|`` is the largest finite magnitude of that output on that feed (an absolute tolerance for outputs of order 1 or
less, relative to the output's scale above that). NaN matches NaN and inf matches the same inf; shapes must agree.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import Any

import numpy as np
import onnx

from edgekit.errors import EdgekitError
from edgekit.passes.base import GraphPass, PassConfig, PassResult, get_pass, io_names

RULE = "max|fused-ref| <= tolerance*max(1, max|ref|) per output and feed"
_PROTO_LIMIT = 2**31 - (64 << 20)  # protobuf serialization limit, with headroom


def pass_entry(entry: Any) -> tuple[str, dict | PassConfig]:
    """``name`` or ``{name: options}`` (options a dict, a pass config or None) -> (name, options)."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        ((name, options),) = entry.items()
        options = {} if options is None else options
        if isinstance(name, str) and isinstance(options, (dict, PassConfig)):
            return name, options
    raise EdgekitError(f"bad pass entry {entry!r}", fix="write a pass as its name or as {name: {option: value}}")


def build_passes(entries: list) -> list[GraphPass]:
    """Every entry resolved to a configured pass before any work (unknown pass/option or bad value: EdgekitError)."""
    return [get_pass(*pass_entry(e)) for e in entries]


def apply_passes(model: onnx.ModelProto, passes: list[GraphPass], log=None) -> tuple[onnx.ModelProto, list[PassResult]]:
    """Apply configured passes in order (each to a copy); ``log(result)`` is called after each one."""
    results: list[PassResult] = []
    for p in passes:
        g = model.graph
        before = (len(g.node), len(g.initializer))
        start = time.perf_counter()
        model = p.apply(model)
        result = PassResult(p.name, before[0], len(model.graph.node), before[1], len(model.graph.initializer), time.perf_counter() - start)
        results.append(result)
        if log is not None:
            log(result)
    return model, results


# ------------------------------------------------------------------------------------------------- checking


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if model.ByteSize() < _PROTO_LIMIT:
        return ort.InferenceSession(model.SerializeToString(), providers=providers)
    with tempfile.TemporaryDirectory(prefix="edgekit_verify_") as tmp:  # > 2 GB: weights beside the graph
        path = os.path.join(tmp, "model.onnx")
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(copy, path, save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(path, providers=providers)  # ORT reads the weights while building the session


def _outputs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """The model's outputs on every feed, from one session."""
    session = _session(model)
    try:
        return [session.run(None, feed) for feed in feeds]
    finally:
        del session


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _compare(names: list[str], ref: list[list[np.ndarray]], got: list[list[np.ndarray]], tolerance: float) -> tuple[dict, str | None]:
    """The verification record and, when the rule is broken, why (first offending output and feed)."""
    per_output = {n: {"max_abs_error": 0.0, "scale": 0.0} for n in names}
    worst, problem = 0.0, None
    for i, (ref_outs, got_outs) in enumerate(zip(ref, got)):
        for name, r, g in zip(names, ref_outs, got_outs):
            if r.shape != g.shape:
                problem = problem or f"output '{name}' has shape {g.shape} instead of {r.shape} (feed {i})"
                per_output[name]["max_abs_error"] = float("inf")
                continue
            if r.dtype.kind not in "fiub" or g.dtype.kind not in "fiub":
                if not np.array_equal(r, g):
                    problem = problem or f"output '{name}' differs (feed {i})"
                    per_output[name]["max_abs_error"] = float("inf")
                continue
            r64, g64 = r.astype(np.float64), g.astype(np.float64)
            with np.errstate(invalid="ignore"):
                same = (r64 == g64) | (np.isnan(r64) & np.isnan(g64))
                diff = np.where(same, 0.0, np.abs(g64 - r64))
            diff = np.nan_to_num(diff, nan=np.inf)
            err = float(diff.max(initial=0.0))
            finite = np.abs(r64[np.isfinite(r64)])
            scale = float(finite.max(initial=0.0))
            allowed = tolerance * max(1.0, scale)
            rec = per_output[name]
            rec["max_abs_error"] = max(rec["max_abs_error"], err)
            rec["scale"] = max(rec["scale"], scale)
            worst = max(worst, err / allowed)
            if err > allowed and problem is None:
                problem = f"output '{name}' max abs error {err:.3g} > allowed {allowed:.3g} (feed {i})"
    record = {
        "feeds": len(ref),
        "tolerance": tolerance,
        "rule": RULE,
        "max_abs_error": max((o["max_abs_error"] for o in per_output.values()), default=0.0),
        "max_error_ratio": worst if problem is None else max(worst, 1.0),
        "outputs": per_output,
    }
    return record, problem


class _Checker:
    """Reference outputs computed once; ``check(model)`` runs one session over every feed."""

    def __init__(self, reference: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], tolerance: float, graph: str) -> None:
        self.names = io_names(reference.graph.output)
        self.feeds, self.tolerance, self.graph = feeds, tolerance, graph
        try:
            self.ref = _outputs(reference, feeds)
        except Exception as exc:  # noqa: BLE001 -- the unfused graph itself: nothing to verify against
            raise EdgekitError(
                f"{graph}: the unfused graph does not run in onnxruntime (CPU), so the passes cannot be verified: {_first_line(exc)}",
                fix="check the export (opset, custom ops) and the verification feeds",
            ) from exc

    def check(self, model: onnx.ModelProto) -> tuple[dict, str | None]:
        names = io_names(model.graph.output)
        if names != self.names:
            return {}, f"graph outputs {names} instead of {self.names}"
        try:
            got = _outputs(model, self.feeds)
        except Exception as exc:  # noqa: BLE001 -- a pass produced a graph ORT refuses
            return {}, f"the graph no longer runs in onnxruntime: {_first_line(exc)}"
        return _compare(self.names, self.ref, got, self.tolerance)


# ------------------------------------------------------------------------------------------------ fuse_graph


def fuse_graph(
    model: onnx.ModelProto,
    passes: list[str | dict],
    simplify: bool,
    feeds: list[dict[str, np.ndarray]],
    tolerance: float,
    graph: str = "model",
) -> tuple[onnx.ModelProto, dict]:
    """Run the configured passes, then (``simplify``) onnxslim, and verify the result against ``model`` on ``feeds``.

    Returns the fused model (``model`` is left untouched) and a JSON-able record::

        {"applied": [PassResult as dict + "options"], "verified": {max abs error per output, ...},
         "onnxslim": "applied" | "kept unslimmed: <reason>" | "off"}

    The normal path costs one reference and one fused ONNX Runtime session. When the final model breaks the rule, the
    model before onnxslim is checked: onnxslim alone at fault -> its output is dropped (one yellow log line); otherwise the
    passes are re-applied one by one and the first whose output breaks the rule is named in an ``EdgekitError``.
    """
    from rich.markup import escape

    from edgekit import progress

    configured = build_passes(passes)  # every entry checked before any work
    if not feeds:
        raise ValueError("fuse_graph needs at least one feed to verify the passes")
    fused, results = apply_passes(model, configured)
    if not configured:
        fused = onnx.ModelProto()
        fused.CopyFrom(model)
    applied = [
        {**dataclasses.asdict(r), "options": p.config.model_dump(mode="json", exclude_defaults=True)}
        for p, r in zip(configured, results)
    ]

    slim_status, slim_reason, slimmed = "off", None, None
    if simplify:
        try:
            slimmed = get_pass("onnxslim").apply(fused)
        except Exception as exc:  # noqa: BLE001 -- third-party tool: its failure costs the simplification only
            slim_reason = f"onnxslim raised {_first_line(exc)}"
    verified = {"feeds": 0, "tolerance": tolerance, "rule": RULE, "max_abs_error": 0.0, "max_error_ratio": 0.0,
                "outputs": {}, "skipped": "nothing applied"}
    if configured or slimmed is not None:
        checker = _Checker(model, feeds, tolerance, graph)
        if slimmed is None:
            verified, problem = checker.check(fused)
        else:
            slim_verified, problem = checker.check(slimmed)
            if problem is None:
                fused, slim_status, verified = slimmed, "applied", slim_verified
            else:  # onnxslim or a pass: the model before onnxslim decides
                slim_reason = f"its output failed verification: {problem}"
                problem = None
                if configured:
                    verified, problem = checker.check(fused)
        if problem is not None:
            _blame(model, configured, checker, graph)
    if slim_reason is not None:
        slim_status = f"kept unslimmed: {slim_reason}"
        where = "" if graph == "model" else f" ({graph})"
        progress.log(f"[yellow]onnxslim skipped{escape(where)}: {escape(slim_reason)}[/yellow]")
    return fused, {"applied": applied, "verified": verified, "onnxslim": slim_status}


def _blame(model: onnx.ModelProto, configured: list[GraphPass], checker: _Checker, graph: str) -> None:
    """Re-apply the passes one at a time; raise naming the first after which the outputs break the rule."""
    current = model
    for p in configured:
        current = p.apply(current)
        _, problem = checker.check(current)
        if problem is not None:
            raise EdgekitError(
                f"{graph}: pass '{p.name}' changed the outputs: {problem}",
                fix=f"remove '{p.name}' from export.passes (or change its options) and report the bug",
            )
    names = ", ".join(p.name for p in configured)
    raise EdgekitError(
        f"{graph}: the passes {names} changed the outputs (not reproducible pass by pass)",
        fix="remove passes from export.passes until the check passes",
    )
