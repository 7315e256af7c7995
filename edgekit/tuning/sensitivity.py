"""Per-group quantization sensitivity: what each quantizer group costs in tuning loss and what it saves in latency.

For every :class:`~edgekit.tuning.groups.Group`: the tuning loss (points, :meth:`TuningScorer.loss_pt`) when only
that group is left float (everything else int8: how much of the all-int8 loss the group causes), optionally when
only that group is int8 (everything else float: its loss in isolation, a second, costlier pass), and its latency
cost on this machine: how much slower the model gets when the group runs float instead of int8 (negative: the
int8 form is the slower one, e.g. ORT's first QLinearConv on 3 input channels).

Latency cost, ``method``:

* ``profile`` (default): ONNX Runtime's profiler on the all-int8 and the all-float model; every kernel event is
  mapped back to the graph node its name starts with (ORT names a fused kernel after the node it replaces:
  ``/model.0/conv/Conv_token_3`` for the QLinearConv, ``/model.0/act/Mul/QuickGeluFusion/`` for the float SiLU,
  ``<tensor>_QuantizeLinear`` after the producer of the tensor), the group's cost is its float kernels' median time
  minus its int8 kernels' median time. It leaves out the Q/DQ a float island adds at its borders in a mixed graph.
  A group with no mapped kernel in either profile falls back to ``measured``.
* ``measured``: the "this group float" candidate's latency minus the all-int8 one, the median of per-round
  differences of one interleaved run (one candidate build and session per group: slow, but no mapping).

Candidates are written under ``workdir`` and deleted once scored. Losses are deterministic (same graph, same
tuning samples, same ORT threads); latencies are measurements.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgekit.quantization.placement import Placement, quantized_nodes
from edgekit.quantization.ptq import place
from edgekit.tuning.groups import Group, node_patterns
from edgekit.tuning.scorer import TuningScorer

Progress = Callable[[str, int], Iterator[int]]
LATENCY_METHODS = ("profile", "measured")


def latency_feed(scorer: TuningScorer) -> dict[str, np.ndarray]:
    """One real tuning input for latency runs: the scorer's ``timing_feed`` when it has one (a decoder's decode
    step), else its first sample through its own preprocessing."""
    if getattr(scorer, "timing_feed", None) is not None:
        return scorer.timing_feed
    sample = scorer.samples[0]
    if hasattr(scorer, "detector"):
        return scorer.detector.preprocess(sample)[0]
    transform = getattr(scorer, "transform", None)
    return transform(sample) if transform else sample


def load_runner(path: Path, threads: int):
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path, threads=threads)
    runner.load()
    return runner


def paired_latency(baseline, candidate, feed: dict, runs: int, warmup: int = 3) -> tuple[float, float, float]:
    """(candidate median, baseline median, median of the per-round differences) in ms: :func:`paired_latency_se`
    without the standard error."""
    return paired_latency_se(baseline, candidate, feed, runs, warmup)[:3]


def paired_latency_se(baseline, candidate, feed: dict, runs: int, warmup: int = 3) -> tuple[float, float, float, float]:
    """(candidate median, baseline median, median of the per-round differences, its standard error) in ms. Each
    round times both (one untimed settling call before each timed one, the order alternating), so the paired
    difference cancels the drift of a shared machine far better than a difference of two medians. The standard
    error of the median difference is 1.2533 x its standard deviation / sqrt(rounds) (normal approximation)."""
    for runner in (baseline, candidate):
        for _ in range(warmup):
            runner.infer(feed)
    base, cand = [], []
    for i in range(max(runs, 1)):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            runner = candidate if which else baseline
            runner.infer(feed)
            t0 = time.perf_counter()
            runner.infer(feed)
            (cand if which else base).append((time.perf_counter() - t0) * 1000.0)
    diffs = [c - b for c, b in zip(cand, base)]
    se = 1.2533 * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return statistics.median(cand), statistics.median(base), statistics.median(diffs), se


class Candidates:
    """Builds, scores and deletes candidate models ("these groups float, the rest int8") of one calibrated graph."""

    def __init__(self, model: onnx.ModelProto, placement: Placement, ranges: dict, float_nodes: list[str], float_ops: list[str],
                 calibration: dict, scorer: TuningScorer, groups: Sequence[Group], workdir: str | Path, threads: int = 2,
                 feed: dict[str, np.ndarray] | None = None, timer: Callable[[Path, list[str]], Any] | None = None,
                 builder: Callable[[list[str], Path], None] | None = None) -> None:
        self.model, self.placement, self.ranges = model, placement, ranges
        self.builder = builder  # (float node patterns, out path) -> writes a candidate another way (weight-only); None: Q/DQ ``place``
        self.timer = timer  # (Q/DQ path, float node patterns) -> loaded runner that times a candidate (None: the ORT runner)
        self.score_on_timer = False  # score losses on the timer's runner (its own quantizer's candidate) instead of ORT's
        self.estimate: Callable[[Sequence[str]], float] | None = None  # (float groups) -> model ms: a cost model instead of timing
        self.float_nodes, self.float_ops, self.calibration = list(float_nodes), list(float_ops), calibration
        self.scorer, self.groups, self.threads = scorer, list(groups), threads
        self.by_name = {g.name: g for g in self.groups}
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.feed = feed if feed is not None else latency_feed(scorer)
        self.losses: dict[tuple[str, ...], float] = {}
        self.quantized = [n.name for n in quantized_nodes(model, placement, self.float_nodes, self.float_ops)]

    def key(self, names: Sequence[str]) -> tuple[str, ...]:
        """Float group names in graph order (one key per set)."""
        chosen = set(names)
        return tuple(g.name for g in self.groups if g.name in chosen)

    def patterns(self, names: Sequence[str]) -> list[str]:
        """The ``float_nodes`` patterns that leave these groups float (on top of the caller's)."""
        return node_patterns([n for name in self.key(names) for n in self.by_name[name].nodes])

    def build(self, names: Sequence[str], only: bool = False) -> Path:
        """Write the candidate with ``names`` float (``only``: with every quantized node *except* those groups' float)
        under ``workdir`` and return its path."""
        key = self.key(names)
        if only:
            keep = {n for name in key for n in self.by_name[name].nodes}
            extra = node_patterns([n for n in self.quantized if n not in keep])
        else:
            extra = self.patterns(key)
        tag = hashlib.sha256(json.dumps([only, key]).encode()).hexdigest()[:16]
        path = self.workdir / f"candidate_{tag}.onnx"
        if self.builder is not None:
            self.builder(self.float_nodes + extra, path)
            return path
        qdq, _ = place(self.model, self.placement, self.ranges, self.float_nodes + extra, self.float_ops, self.calibration)
        onnx.save(qdq, str(path))
        return path

    def loss_only(self, names: Sequence[str]) -> float:
        """Tuning loss (points) with only these groups int8 and every other quantized node float."""
        path = self.build(names, only=True)
        runner = load_runner(path, self.threads)
        try:
            return self.scorer.loss_pt(self.scorer.score(runner))
        finally:
            self.close(runner, path)

    def open(self, names: Sequence[str]):
        """(loaded ORT runner, path) of a freshly built candidate; call :meth:`close` when done."""
        path = self.build(names)
        return load_runner(path, self.threads), path

    def timing_runner(self, runner, path: Path, names: Sequence[str]):
        """The runner that times the candidate ``names`` float (written at ``path``): ``runner`` itself, or the
        backend's own build of it (``timer`` gets every float node pattern: the caller's and the groups')."""
        return runner if self.timer is None else self.timer(path, self.float_nodes + self.patterns(names))

    def close_timing(self, timing, runner) -> None:
        if timing is not runner:
            timing.close()

    @staticmethod
    def close(runner, path: Path) -> None:
        runner.close()
        path.unlink(missing_ok=True)

    def loss(self, names: Sequence[str], runner=None) -> float:
        """Tuning loss (points) of the candidate with ``names`` float (cached per set)."""
        key = self.key(names)
        if key not in self.losses:
            if runner is not None:
                self.losses[key] = self.scorer.loss_pt(self.scorer.score(runner))
            else:
                runner, path = self.open(key)
                try:
                    self.losses[key] = self.scorer.loss_pt(self.scorer.score(runner))
                finally:
                    self.close(runner, path)
        return self.losses[key]


@dataclass
class SensitivityRow:
    group: str
    kind: str
    nodes: int
    loss_float_only_pt: float | None  # all-int8 except this group
    loss_quantized_only_pt: float | None  # all-float except this group (None: not computed)
    latency_cost_ms: float | None  # float minus int8 time of the group (negative: int8 is slower)
    method: str  # how latency_cost_ms was obtained: profile | measured

    def recovered_pt(self, baseline_loss_pt: float) -> float | None:
        """Loss recovered by leaving this group float (the all-int8 loss minus ``loss_float_only_pt``)."""
        return None if self.loss_float_only_pt is None else round(baseline_loss_pt - self.loss_float_only_pt, 4)


@dataclass
class SensitivityTable:
    rows: list[SensitivityRow]
    baseline_loss_pt: float  # all groups int8
    baseline_latency_ms: float  # all groups int8, median
    float_latency_ms: float | None  # all groups float, median (same interleaved run)
    latency_method: str
    scorer: str
    seconds: float
    profile_coverage: float | None = None  # share of the int8 profile's kernel time mapped to a graph node
    complete: bool = True  # False when a time limit stopped it before every group
    notes: list[str] = field(default_factory=list)

    def row(self, group: str) -> SensitivityRow | None:
        return next((r for r in self.rows if r.group == group), None)

    def sorted(self) -> list[SensitivityRow]:
        """Rows by loss recovered when left float, largest first (ties: graph order)."""
        return sorted(self.rows, key=lambda r: -(r.recovered_pt(self.baseline_loss_pt) or 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "rows"},
                "rows": [{**asdict(r), "recovered_pt": r.recovered_pt(self.baseline_loss_pt)} for r in self.rows]}

    def render(self, limit: int | None = None):
        """A rich Table, most sensitive group first."""
        from rich.table import Table

        table = Table(title=f"quantizer group sensitivity ({self.scorer}); all-int8 loss {self.baseline_loss_pt:.2f} pt, "
                            f"{self.baseline_latency_ms:.1f} ms; latency cost: {self.latency_method}")
        for col in ("group", "kind", "nodes", "loss float-only pt", "recovered pt", "loss int8-only pt", "latency cost ms", "method"):
            table.add_column(col, justify="left" if col in ("group", "kind", "method") else "right")
        fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)  # noqa: E731
        for r in self.sorted()[:limit]:
            table.add_row(r.group, r.kind, str(r.nodes), fmt(r.loss_float_only_pt), fmt(r.recovered_pt(self.baseline_loss_pt), "{:+.2f}"),
                          fmt(r.loss_quantized_only_pt), fmt(r.latency_cost_ms, "{:+.3f}"), r.method)
        return table


# --- ORT profiler -----------------------------------------------------------------------------------------------


def profile_kernels(path: Path, feed: dict, threads: int, runs: int, workdir: Path) -> dict[str, float]:
    """Median time (ms) per kernel event name of ``runs`` profiled runs (after 2 unprofiled-equivalent warm-ups)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(workdir / f"profile_{path.stem}")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    warmup = 2
    for _ in range(warmup + runs):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    per_name: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_name.setdefault(e["name"][: -len("_kernel_time")], []).append(e["dur"] / 1000.0)
    return {name: statistics.median(times[warmup:] or times) for name, times in per_name.items()}


def kernel_owner(event: str, nodes: set[str]) -> str | None:
    """The graph node a kernel event is named after: the longest node name the event name equals or starts with,
    followed by ``_`` or ``/``."""
    if event in nodes:
        return event
    for i in range(len(event) - 1, 0, -1):
        if event[i] in "_/" and event[:i] in nodes:
            return event[:i]
    return None


def node_times(kernels: dict[str, float], nodes: set[str]) -> tuple[dict[str, float], float]:
    """(ms per graph node, share of the total kernel time that mapped to a node)."""
    out: dict[str, float] = {}
    mapped = 0.0
    for event, ms in kernels.items():
        owner = kernel_owner(event, nodes)
        if owner is not None:
            out[owner] = out.get(owner, 0.0) + ms
            mapped += ms
    total = sum(kernels.values())
    return out, (mapped / total if total else 0.0)


def profile_costs(cands: Candidates, runs: int) -> tuple[dict[str, float | None], float]:
    """Per group: float kernels' time minus int8 kernels' time (ms), None where a group mapped to no kernel."""
    names = {n.name for n in cands.model.graph.node}
    times = {}
    coverage = 0.0
    for label, floated in (("int8", ()), ("float", tuple(g.name for g in cands.groups))):
        path = cands.build(floated)
        try:
            times[label], share = node_times(profile_kernels(path, cands.feed, cands.threads, runs, cands.workdir), names)
        finally:
            path.unlink(missing_ok=True)
        coverage = share if label == "int8" else coverage
    costs: dict[str, float | None] = {}
    for g in cands.groups:
        t8 = [times["int8"][n] for n in g.nodes if n in times["int8"]]
        tf = [times["float"][n] for n in g.nodes if n in times["float"]]
        costs[g.name] = round(sum(tf) - sum(t8), 4) if t8 and tf else None
    return costs, coverage


# --- the table --------------------------------------------------------------------------------------------------


def sensitivity(
    model: onnx.ModelProto,
    placement: Placement,
    ranges: dict,
    float_nodes: list[str],
    float_ops: list[str],
    calibration: dict,
    scorer: TuningScorer,
    groups: Sequence[Group],
    workdir: str | Path,
    threads: int = 2,
    latency_runs: int = 20,
    progress: Progress | None = None,
    quantized_only: bool = True,
    latency: str = "profile",
    time_limit_s: float | None = None,
    feed: dict[str, np.ndarray] | None = None,
    builder: Callable[[list[str], Path], None] | None = None,
) -> SensitivityTable:
    """The sensitivity table of ``groups`` (a subset of :func:`quantizer_groups` is fine: the others stay int8).

    ``quantized_only=False`` skips the "only this group int8" pass; ``latency`` is ``profile`` or ``measured``;
    ``time_limit_s`` stops before the next group once spent (``complete=False``); ``builder`` writes candidates
    another way than Q/DQ (e.g. :func:`edgekit.quantization.weight_only.weight_only_builder`).
    """
    if latency not in LATENCY_METHODS:
        raise ValueError(f"latency must be one of {LATENCY_METHODS}, not {latency!r}")
    start = time.perf_counter()
    cands = Candidates(model, placement, ranges, float_nodes, float_ops, calibration, scorer, groups, workdir, threads, feed, builder=builder)
    all_names = [g.name for g in cands.groups]
    base, base_path = cands.open(())
    notes: list[str] = []
    try:
        baseline_loss = cands.loss((), base)
        full, full_path = cands.open(all_names)
        try:
            float_ms, base_ms, _ = paired_latency(base, full, cands.feed, latency_runs)
        finally:
            cands.close(full, full_path)
        costs, coverage = profile_costs(cands, latency_runs) if latency == "profile" else ({}, None)
        if latency == "profile":
            notes.append(f"profile: {coverage:.0%} of the int8 kernel time maps to graph nodes; the rest (layout "
                         "transposes, input quantization) belongs to no group")
        rows: list[SensitivityRow] = []
        steps = progress or (lambda _label, n: iter(range(n)))
        for i in steps("sensitivity", len(cands.groups)):
            if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
                notes.append(f"time limit {time_limit_s:g} s reached after {len(rows)} of {len(cands.groups)} groups")
                break
            g = cands.groups[i]
            rows.append(_row(cands, g, base, costs.get(g.name), latency_runs, quantized_only))
    finally:
        cands.close(base, base_path)
    return SensitivityTable(rows, baseline_loss, round(base_ms, 3), round(float_ms, 3), latency, scorer.description,
                            round(time.perf_counter() - start, 1), coverage, len(rows) == len(cands.groups), notes)


def _row(cands: Candidates, g: Group, base, profiled: float | None, runs: int, quantized_only: bool) -> SensitivityRow:
    runner, path = cands.open((g.name,))
    try:
        loss_float = cands.loss((g.name,), runner)
        method, cost = "profile", profiled
        if cost is None:
            method, cost = "measured", round(paired_latency(base, runner, cands.feed, runs)[2], 4)
    finally:
        cands.close(runner, path)
    loss_q = cands.loss_only((g.name,)) if quantized_only else None
    return SensitivityRow(g.name, g.kind, len(g.nodes), loss_float, loss_q, cost, method)


def cleanup(workdir: str | Path) -> None:
    """Remove candidate files a crashed run left in ``workdir`` (never anything else)."""
    for p in Path(workdir).glob("candidate_*.onnx"):
        os.unlink(p)
