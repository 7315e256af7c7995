"""Budget search: the fastest set of quantizer groups left float whose tuning loss stays within a budget.

Every candidate is built, scored on the tuning samples (label-free, :class:`TuningScorer`) and its latency
*measured*: median over ``latency_runs`` calls on ONNX Runtime (or on the backend whose runner ``timer`` gives, e.g.
the IR NNCF builds with the same nodes float), interleaved with the all-int8 baseline in the same loop, so ``delta_ms`` (candidate minus baseline) cancels machine drift and candidates are compared by it. Steps,
each stopped by the time limit (the baseline is always evaluated; no candidate starts once ``time_limit_s`` is
spent):

1. the all-int8 baseline;
2. *free wins*: the groups whose int8 form is clearly slower than float (sensitivity ``latency_cost_ms`` below
   -0.5% of the int8 latency, e.g. ORT's QLinearConv on 3 input channels), together, then the most negative alone;
   the first measured faster beyond noise (2 standard errors of the paired difference) within budget becomes the
   starting point;
3. *greedy*: when the starting point is over budget, groups ranked by loss recovered per ms of latency cost (the sensitivity table's
   float-only part, computed here if not given), then the rest (so "all float" stays reachable); the shortest
   ranked prefix that meets the budget is found by doubling then bisection (the additive estimate of the
   recoveries only picks the first prefix to try);
4. *prune*: dropping groups of the fastest candidate within budget one at a time (cheapest recovery per ms first),
   kept when still within budget and not measurably slower (fewer float groups win ties);
5. *confirm*: the fastest three candidates within budget are timed again with 3x the runs, in the last quarter of
   the time limit, which steps 1-4 leave for it (the fastest of many noisy measurements is biased fast);
6. *held out*: with ``holdout`` (the tuning samples the search did not score on), a chosen float set is scored there
   against all int8. Candidates pass the loss test on the very samples that filtered them, so their losses are biased
   low too: when the baseline meets the budget, a set worse than all int8 on the held-out samples is rejected and the
   next choice checked (at most three); otherwise the held-out losses are only recorded.

The answer: when the all-int8 baseline meets ``max_loss_pt - margin_pt`` (the default budget is its own loss), the
fastest *confirmed* candidate measured faster than it by more than 2 standard errors, else the baseline itself, so
noise never buys float groups; when it does not, the candidate within budget with the fewest float groups among those
not measurably slower than the fastest (2 standard errors); when none is, the lowest-loss
candidate with ``met=False`` (never an exception). On a noisy 2-core machine the usual answer is all int8 plus the
groups whose int8 form is clearly slower.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgekit.quantization.placement import Placement
from edgekit.tuning.groups import Group
from edgekit.tuning.scorer import TuningScorer
from edgekit.tuning.sensitivity import Candidates, Progress, SensitivityTable, paired_latency_se, profile_costs
from edgekit.tuning.sensitivity import sensitivity as sensitivity_table

FREE_WIN_SHARE = 0.005  # a group counts as faster float when its cost is below -0.5% of the all-int8 latency
MIN_COST_MS = 0.01  # a recovery per ms with a cost at or below zero ranks as if it cost this much
CONFIRM_TOP, CONFIRM_FACTOR = 3, 3  # finalists re-timed at the end, and how many times the runs
CONFIRM_SHARE = 0.25  # of the time limit kept for the confirmation step
SIGNIFICANT_SE = 2.0  # a candidate beats the all-int8 baseline only when faster by this many standard errors
MIN_HELD_OUT = 8  # fewer held-out tuning samples than this confirm nothing (step 6 is skipped)


@dataclass
class Trial:
    float_groups: tuple[str, ...]
    loss_pt: float
    latency_ms: float  # candidate median
    baseline_ms: float  # baseline median in the same interleaved run
    delta_ms: float  # median per-round difference to the baseline (paired): what candidates are compared by
    met: bool
    seconds: float
    step: str
    se_ms: float = 0.0  # standard error of delta_ms

    @property
    def faster(self) -> bool:
        """Faster than the baseline beyond measurement noise (``SIGNIFICANT_SE`` standard errors)."""
        return self.delta_ms + SIGNIFICANT_SE * self.se_ms < 0


@dataclass
class SearchResult:
    float_groups: list[str]
    float_nodes: list[str]  # node-name patterns to add to the recipe's float_nodes
    loss_pt: float
    latency_ms: float
    delta_ms: float
    met: bool
    baseline_loss_pt: float
    baseline_latency_ms: float
    max_loss_pt: float
    margin_pt: float
    trace: list[Trial]
    seconds: float
    stopped: str  # "done" or "time limit"
    sensitivity_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    table: SensitivityTable | None = field(default=None, repr=False)  # the table the search ranked groups by
    backend: str = "onnxruntime"  # whose latency priced the candidates
    held_out: dict[str, Any] | None = None  # step 6: samples, all-int8 loss and each checked choice's loss there

    @property
    def target_pt(self) -> float:
        return self.max_loss_pt - self.margin_pt

    @property
    def sensitivity(self) -> dict[str, Any] | None:
        return self.table.to_dict() if self.table is not None else None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "table"}
        return {**out, "trace": [asdict(t) for t in self.trace], "sensitivity": self.sensitivity, "target_pt": self.target_pt}

    def render(self):
        """A rich Table of the trace, the chosen candidate marked."""
        from rich.table import Table

        table = Table(title=f"budget search: loss <= {self.target_pt:.2f} pt ({'met' if self.met else 'NOT met'}); chosen "
                            f"{len(self.float_groups)} float groups, loss {self.loss_pt:.2f} pt, {self.delta_ms:+.2f} ms vs all-int8 "
                            f"({self.baseline_loss_pt:.2f} pt, {self.baseline_latency_ms:.1f} ms); {self.seconds:.0f} s, {self.stopped}")
        for col in ("#", "step", "float groups", "loss pt", "latency ms", "vs int8 ms", "meets", "s", ""):
            table.add_column(col, justify="left" if col in ("step", "float groups", "") else "right")
        chosen = tuple(self.float_groups)
        for i, t in enumerate(self.trace):
            groups = ", ".join(t.float_groups) if len(t.float_groups) <= 4 else f"{len(t.float_groups)}: {', '.join(t.float_groups[:3])}, ..."
            table.add_row(str(i), t.step, groups or "(none)", f"{t.loss_pt:.2f}", f"{t.latency_ms:.2f}", f"{t.delta_ms:+.2f}",
                          "yes" if t.met else "no", f"{t.seconds:.1f}", "<- chosen" if t.float_groups == chosen else "")
        return table


class _Search:
    """The state of one search: candidates, the loaded baseline runner, the trace and the clock."""

    def __init__(self, cands: Candidates, target: float, runs: int, limit: float, start: float) -> None:
        self.cands, self.target, self.runs, self.limit, self.start = cands, target, runs, limit, start
        self.trace: list[Trial] = []
        self.tried: dict[tuple[str, ...], Trial] = {}
        self.base = self.base_path = self.base_timing = None
        self.rejected: set[tuple[str, ...]] = set()  # float sets worse than all int8 on the held-out samples
        self.last_cost = 0.0
        self.hit_limit = False

    def out_of_time(self) -> bool:
        """True once the limit is spent, or would be by one more candidate costing what the last one did."""
        over = time.perf_counter() - self.start + self.last_cost > self.limit
        self.hit_limit |= over
        return over

    def evaluate(self, names: Sequence[str], step: str, force: bool = False) -> Trial | None:
        """Build, score and time one candidate (None when the time limit forbids it)."""
        key = self.cands.key(names)
        if key in self.tried:
            return self.tried[key]
        if not force and self.out_of_time():
            return None
        t0 = time.perf_counter()
        if self.cands.estimate is not None:  # priced by a cost model: nothing to time, the estimate is exact and paired
            loss = self.cands.loss(key)
            ms, base_ms = self.cands.estimate(key), self.cands.estimate(())
            trial = Trial(key, loss, round(ms, 5), round(base_ms, 5), round(ms - base_ms, 5), loss <= self.target, 0.0, step)
        elif not key:
            self.base, self.base_path = self.cands.open(())
            self.base_timing = self.cands.timing_runner(self.base, self.base_path, ())
            loss = self.cands.loss((), self.base_timing if self.cands.score_on_timer else self.base)
            _, base_ms, _, _ = paired_latency_se(self.base_timing, self.base_timing, self.cands.feed, self.runs)
            trial = Trial((), loss, round(base_ms, 3), round(base_ms, 3), 0.0, loss <= self.target, 0.0, step)
        else:
            runner, path = self.cands.open(key)
            try:
                timing = self.cands.timing_runner(runner, path, key)
                try:
                    loss = self.cands.loss(key, timing if self.cands.score_on_timer else runner)
                    ms, base_ms, delta, se = paired_latency_se(self.base_timing, timing, self.cands.feed, self.runs)
                finally:
                    self.cands.close_timing(timing, runner)
            finally:
                self.cands.close(runner, path)
            trial = Trial(key, loss, round(ms, 3), round(base_ms, 3), round(delta, 3), loss <= self.target, 0.0, step, round(se, 3))
        trial.seconds = round(time.perf_counter() - t0, 2)
        self.last_cost = trial.seconds
        self.trace.append(trial)
        self.tried[key] = trial
        return trial

    def time(self, runner, path: Path, key: tuple[str, ...], runs: int) -> tuple[float, float, float, float]:
        """:func:`paired_latency_se` of candidate ``key`` (at ``path``) against the baseline, on the timing backend."""
        timing = self.cands.timing_runner(runner, path, key)
        try:
            return paired_latency_se(self.base_timing, timing, self.cands.feed, runs)
        finally:
            self.cands.close_timing(timing, runner)

    def remeasure(self, key: tuple[str, ...], runs: int) -> Trial | None:
        """Time an already scored candidate again with ``runs`` paired rounds (its loss is cached): the new trial
        replaces the old one in the choice."""
        if self.out_of_time():
            return None
        t0 = time.perf_counter()
        runner, path = self.cands.open(key)
        try:
            ms, base_ms, delta, se = self.time(runner, path, key, runs)
        finally:
            self.cands.close(runner, path)
        old = self.tried[key]
        trial = Trial(key, old.loss_pt, round(ms, 3), round(base_ms, 3), round(delta, 3), old.met, round(time.perf_counter() - t0, 2), "confirm",
                      round(se, 3))
        self.trace.append(trial)
        self.tried[key] = trial
        return trial

    def best(self) -> Trial:
        """Within budget, the fastest candidate; when the all-int8 baseline meets the budget, another candidate
        replaces it only when its confirmation run measured it faster beyond noise (``Trial.faster``): the fastest
        of many noisy first measurements is biased fast. Otherwise, among candidates within budget not measurably slower
        than the fastest, the fewest float groups. Over budget everywhere: the lowest loss."""
        latest = [t for k, t in self.tried.items() if k not in self.rejected]  # one trial per candidate: the latest measurement
        met = [t for t in latest if t.met]
        base = self.tried.get(())
        if base is not None and base.met:
            exact = getattr(self.cands, "estimate", None) is not None  # a cost model's estimate needs no confirmation run
            proven = [t for t in met if t.float_groups and (t.step == "confirm" or exact) and t.faster]
            return min(proven, key=lambda t: t.delta_ms) if proven else base
        if not met:
            return min(latest, key=lambda t: (t.loss_pt, t.delta_ms))
        fastest = min(met, key=lambda t: t.delta_ms)
        # as in the prune step: fewer float groups unless measurably slower than the fastest
        ties = [t for t in met if t.delta_ms <= fastest.delta_ms + SIGNIFICANT_SE * max(t.se_ms, fastest.se_ms)]
        return min(ties, key=lambda t: (len(t.float_groups), t.delta_ms))


def repriced(table: SensitivityTable, estimate: Callable[[Sequence[str]], float], groups: Sequence[str]) -> SensitivityTable:
    """``table`` with its latencies from the cost model ``estimate``: each row's cost is the model's ms with that group
    float minus all int8."""
    base_ms = estimate(())
    rows = [dataclasses.replace(r, latency_cost_ms=round(estimate((r.group,)) - base_ms, 5), method="cost model") for r in table.rows]
    return dataclasses.replace(table, rows=rows, baseline_latency_ms=round(base_ms, 5), float_latency_ms=round(estimate(list(groups)), 5),
                               latency_method="cost model")


def held_out_scorer(scorer: TuningScorer, scored: int | None) -> TuningScorer | None:
    """The tuning samples after the first ``scored`` (those the search scores on), when there are enough to confirm on."""
    rest = scorer.rest(scored)
    return rest if rest is not None and len(rest.samples) >= MIN_HELD_OUT else None


def held_out_loss(cands: Candidates, scorer: TuningScorer, key: tuple[str, ...]) -> float:
    """Loss of candidate ``key`` on ``scorer``'s samples (on the timing backend's build when it scores candidates)."""
    runner, path = cands.open(key)
    try:
        target = cands.timing_runner(runner, path, key) if cands.score_on_timer else runner
        try:
            return scorer.loss_pt(scorer.score(target))
        finally:
            cands.close_timing(target, runner)
    finally:
        cands.close(runner, path)


def _check_held_out(s: _Search, holdout: TuningScorer, notes: list[str]) -> tuple[Trial, dict[str, Any]]:
    """Step 6: the choice scored on the held-out samples against all int8; rejected (and the next choice checked)
    when worse there and the baseline meets the budget."""
    best = s.best()
    record: dict[str, Any] = {"samples": len(holdout.samples), "baseline_loss_pt": None, "checked": []}
    if not best.float_groups:
        return best, record
    record["baseline_loss_pt"] = base_loss = held_out_loss(s.cands, holdout, ())
    enforce = s.tried[()].met
    for _ in range(CONFIRM_TOP):
        loss = held_out_loss(s.cands, holdout, best.float_groups)
        worse = loss > base_loss
        record["checked"].append({"float_groups": list(best.float_groups), "loss_pt": loss, "kept": not (worse and enforce)})
        if not (worse and enforce):
            if worse:
                notes.append(f"held out: the choice loses {loss:.2f} pt on {len(holdout.samples)} held-out tuning samples, "
                             f"all int8 {base_loss:.2f}")
            return best, record
        notes.append(f"held out: {', '.join(best.float_groups)} rejected ({loss:.2f} pt on {len(holdout.samples)} held-out "
                     f"tuning samples, all int8 {base_loss:.2f})")
        s.rejected.add(best.float_groups)
        best = s.best()
        if not best.float_groups:
            break
    return best, record


def _ranked(table: SensitivityTable, exclude: set[str]) -> list[str]:
    """Every ranked group: first those that recover loss when float, by recovery per ms of latency cost (largest
    first); then the rest, most sensitive in isolation first (``loss_quantized_only_pt`` where computed, else the
    least harmful recovery). Single-group recoveries are noisy on few tuning samples, so the tail keeps "everything
    float" reachable: any budget >= 0 is met by some prefix."""
    base = table.baseline_loss_pt
    rows = [r for r in table.rows if r.group not in exclude and r.loss_float_only_pt is not None]
    gain = [r for r in rows if r.recovered_pt(base) > 0]
    ratio = lambda r: r.recovered_pt(base) / max(r.latency_cost_ms or 0.0, MIN_COST_MS)  # noqa: E731
    rest = [r for r in rows if r.recovered_pt(base) <= 0]
    rest_key = lambda r: (-(r.loss_quantized_only_pt or 0.0), -r.recovered_pt(base))  # noqa: E731
    return [r.group for r in sorted(gain, key=lambda r: -ratio(r))] + [r.group for r in sorted(rest, key=rest_key)]


def _free_wins(s: _Search, table: SensitivityTable, current: tuple[str, ...]) -> tuple[str, ...]:
    """Groups clearly faster float (cost below -FREE_WIN_SHARE of the int8 latency: tiny costs are profiler noise)."""
    return _free_wins_from_costs(s, {r.group: r.latency_cost_ms for r in table.rows}, table.baseline_latency_ms, current)


def _free_wins_from_costs(s: _Search, costs: dict[str, float | None], baseline_ms: float, current: tuple[str, ...]) -> tuple[str, ...]:
    """:func:`_free_wins` from profiled costs alone (no loss scoring): run first, so a time limit that stops the loss
    sensitivity still leaves the groups int8 makes slower."""
    cut = -FREE_WIN_SHARE * baseline_ms
    faster = [g for g, c in sorted(costs.items(), key=lambda kv: kv[1] or 0.0) if (c or 0.0) < cut]
    for names in ([*faster], faster[:1]) if len(faster) > 1 else ([*faster],):
        if not names:
            break
        t = s.evaluate(names, "float is faster")
        if t is not None and t.faster and t.met:  # faster beyond noise at no loss over budget
            return t.float_groups
    return current


def _greedy(s: _Search, table: SensitivityTable, current: tuple[str, ...]) -> tuple[str, ...]:
    """The shortest prefix of the ranking (on top of ``current``) that meets the budget: doubling, then bisection."""
    ranked = _ranked(table, set(current))
    if not ranked:
        return current
    need = s.tried[current].loss_pt - s.target
    gains = np.cumsum([max(table.row(g).recovered_pt(table.baseline_loss_pt), 0.0) for g in ranked])
    k = int(min(np.searchsorted(gains, need) + 1, len(ranked)))
    lo, hi = 0, None  # lo: longest prefix known not to meet; hi: shortest known to meet
    while hi is None:
        t = s.evaluate([*current, *ranked[:k]], f"greedy top {k}")
        if t is None:
            return current
        if t.met:
            hi = k
        else:
            lo = k
            if k == len(ranked):
                return t.float_groups  # nothing in the ranking meets: the closest try
            k = min(2 * k, len(ranked))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        t = s.evaluate([*current, *ranked[:mid]], f"bisect top {mid}")
        if t is None:
            break
        lo, hi = (lo, mid) if t.met else (mid, hi)
    return s.cands.key([*current, *ranked[:hi]])


def _prune(s: _Search, table: SensitivityTable, chosen: tuple[str, ...]) -> tuple[str, ...]:
    """Drop chosen groups one at a time (least recovery per ms first) while the budget holds and it gets faster."""
    order = list(reversed(_ranked(table, set())))  # least useful first
    for g in [g for g in order if g in chosen] + [g for g in chosen if g not in order]:
        if s.out_of_time():
            break
        trial = s.evaluate([n for n in chosen if n != g], f"drop {g}")
        current = s.tried[chosen]
        if trial is not None and trial.met and trial.delta_ms < current.delta_ms + SIGNIFICANT_SE * max(trial.se_ms, current.se_ms):
            chosen = trial.float_groups  # fewer float groups unless measurably slower
    return chosen


def _confirm(s: _Search) -> None:
    """Re-time the fastest few candidates within budget with CONFIRM_FACTOR x the runs: the fastest of many noisy
    measurements is biased fast (winner's curse), a second, longer measurement of the finalists is not."""
    finalists = sorted((t for t in s.tried.values() if t.met and t.float_groups), key=lambda t: t.delta_ms)[:CONFIRM_TOP]
    for t in finalists:
        if s.remeasure(t.float_groups, CONFIRM_FACTOR * s.runs) is None:
            break


def search(
    model: onnx.ModelProto,
    placement: Placement,
    ranges: dict,
    float_nodes: list[str],
    float_ops: list[str],
    calibration: dict,
    scorer: TuningScorer,
    groups: Sequence[Group],
    max_loss_pt: float | None,
    workdir: str | Path,
    threads: int = 2,
    margin_pt: float = 0.0,
    time_limit_s: float = 300,
    sensitivity: SensitivityTable | None = None,
    latency_runs: int = 20,
    progress: Progress | None = None,
    feed: dict[str, np.ndarray] | None = None,
    timer: Callable[[Path, list[str]], Any] | None = None,
    backend: str = "onnxruntime",
    score_on_timer: bool = False,
    builder: Callable[[list[str], Path], None] | None = None,
    holdout: TuningScorer | None = None,
    estimate: Callable[[Sequence[str]], float] | None = None,
) -> SearchResult:
    """The fastest measured configuration of float ``groups`` with tuning loss <= ``max_loss_pt - margin_pt``
    (``max_loss_pt=None``: the all-int8 candidate's own loss, i.e. faster at no worse tuning loss).

    ``timer`` ((Q/DQ path, float node patterns) -> loaded runner) times candidates on another backend (``backend``
    names it), e.g. the IR NNCF builds with those nodes ignored; losses are still scored by ``scorer`` (ONNX Runtime). Give it a ``sensitivity`` table:
    the profiler step that would make one is ONNX Runtime's. ``holdout``: tuning samples ``scorer`` does not hold, on
    which the choice is confirmed against all int8 (step 6). ``estimate`` ((float group names) -> model ms) prices
    candidates with a cost model instead of timing them (TensorRT where it cannot run, ``edgekit.backends.tensorrt.cost``):
    the sensitivity table's latency costs are re-priced by it, and nothing is confirmed (an estimate has no noise)."""
    start = time.perf_counter()
    cands = Candidates(model, placement, ranges, float_nodes, float_ops, calibration, scorer, groups, workdir, threads, feed, timer, builder)
    cands.score_on_timer = score_on_timer and timer is not None
    cands.estimate = estimate
    explore_s = time_limit_s * (1 - CONFIRM_SHARE)  # the rest is kept for confirming the finalists
    s = _Search(cands, math.inf if max_loss_pt is None else max_loss_pt - margin_pt, latency_runs, explore_s, start)
    notes: list[str] = []
    sens_s = 0.0
    try:
        base = s.evaluate((), "all int8", force=True)
        if max_loss_pt is None:  # no budget given: no worse than the all-int8 model itself
            max_loss_pt = base.loss_pt
            s.target = max_loss_pt - margin_pt
            base.met = base.loss_pt <= s.target
            notes.append(f"max_loss_pt not given: the all-int8 loss {base.loss_pt:.2f} pt")
        early: tuple[str, ...] = ()
        if sensitivity is None and not s.out_of_time() and estimate is None:  # the cheap step first: profiled costs, no loss scoring
            costs, _ = profile_costs(cands, latency_runs)
            early = _free_wins_from_costs(s, costs, base.latency_ms, ())
        if sensitivity is None and not s.out_of_time():
            left = max(explore_s - (time.perf_counter() - start), 0.0)
            sensitivity = sensitivity_table(model, placement, ranges, float_nodes, float_ops, calibration, scorer, groups, workdir,
                                            threads, latency_runs, progress, quantized_only=False, time_limit_s=left, feed=cands.feed,
                                            builder=builder)
            sens_s = sensitivity.seconds
            if not sensitivity.complete:
                notes.append(f"sensitivity incomplete: {len(sensitivity.rows)} of {len(cands.groups)} groups ranked")
        if estimate is not None and sensitivity is not None:  # the table's losses, the cost model's latency costs
            sensitivity = repriced(sensitivity, estimate, [g.name for g in cands.groups])
            notes.append("latency priced by a cost model, not measured")
        if sensitivity is None or not sensitivity.rows:
            current = early
        if sensitivity is not None and sensitivity.rows:
            current = _free_wins(s, sensitivity, ())
            if not s.tried[current].met:
                current = _greedy(s, sensitivity, current)
            pool = [t for t in s.tried.values() if t.met and t.float_groups]
            if pool:
                _prune(s, sensitivity, min(pool, key=lambda t: t.delta_ms).float_groups)
            s.limit = time_limit_s
            if estimate is None:
                _confirm(s)
    finally:
        if s.base_timing is not None:
            cands.close_timing(s.base_timing, s.base)
        if s.base is not None:
            cands.close(s.base, s.base_path)
    held_out = None
    if holdout is not None:
        best, held_out = _check_held_out(s, holdout, notes)
    else:
        best = s.best()
    base = s.trace[0]
    stopped = "time limit" if s.hit_limit or (sensitivity is not None and not sensitivity.complete) else "done"
    return SearchResult(list(best.float_groups), cands.patterns(best.float_groups), best.loss_pt, best.latency_ms, best.delta_ms, best.met,
                        base.loss_pt, base.latency_ms, max_loss_pt, margin_pt, s.trace, round(time.perf_counter() - start, 1), stopped,
                        sens_s, notes, sensitivity, backend, held_out)
