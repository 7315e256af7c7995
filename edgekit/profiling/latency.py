"""Latency: warm-up, then timed runs; median/p90/p99/min/mean and throughput."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runners.base import Runner


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds over ``runs`` timed calls; ``throughput_per_s`` = batch / median."""

    median: float
    p90: float
    p99: float
    min: float
    mean: float
    std: float
    runs: int
    warmup: int
    batch: int
    throughput_per_s: float
    samples_ms: list[float] = field(default_factory=list)  # every timed call, in order (report.html plots them)

    def to_dict(self) -> dict:
        return asdict(self)


def _check(warmup: int, runs: int, batch: int) -> None:
    if runs < 1 or warmup < 0 or batch < 1:
        raise EdgekitError(f"invalid benchmark settings (runs={runs}, warmup={warmup}, batch={batch})", fix="use runs >= 1, warmup >= 0, batch >= 1")


def stats_from_times(times_ms: list[float], warmup: int, batch: int) -> LatencyStats:
    """Statistics of per-call times in milliseconds."""
    t = np.asarray(times_ms, dtype=np.float64)
    median = float(np.median(t))
    return LatencyStats(
        median, float(np.percentile(t, 90)), float(np.percentile(t, 99)), float(t.min()), float(t.mean()), float(t.std()),
        len(t), warmup, batch, batch * 1000.0 / median if median > 0 else 0.0, [float(x) for x in t],
    )


def measure_latency(runner: Runner, feed: dict[str, np.ndarray], warmup: int = 10, runs: int = 50, batch: int = 1, progress: bool = False) -> LatencyStats:
    """Time ``runner.infer(feed)`` ``runs`` times after ``warmup`` untimed calls (milliseconds).

    ``progress`` shows a rich bar (``edgekit.progress``); the bar is updated outside the timed region.
    """
    from edgekit.progress import track

    _check(warmup, runs, batch)
    for _ in range(warmup):
        runner.infer(feed)
    times = []
    steps = track(f"latency ({runner.backend})", runs) if progress else range(runs)
    for _ in steps:
        start = time.perf_counter()
        runner.infer(feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return stats_from_times(times, warmup, batch)


def measure_latency_interleaved(
    cases: dict[str, tuple[Runner, dict[str, np.ndarray]]], warmup: int = 10, runs: int = 50, batch: int = 1, progress: bool = False, settle: int = 3
) -> dict[str, LatencyStats]:
    """Time several runners round-robin (one timed call each per round, order rotated), so machine noise hits all
    alike. Ratios between variants are only meaningful when measured this way on a shared or throttled machine.

    Each timed call follows ``settle`` untimed calls of the same runner: a runtime's first calls after another
    runtime ran pay for waking its thread pool while the other's threads still spin (measured here: OpenVINO 51 ms
    instead of 31 ms right after ONNX Runtime; ORT INT8 32 ms instead of 22 ms with one settling call among
    OpenVINO and LiteRT, 22 ms with three), a cost steady-state serving never pays.
    """
    from edgekit.progress import track

    _check(warmup, runs, batch)
    for runner, feed in cases.values():
        for _ in range(warmup):
            runner.infer(feed)
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    steps = track(f"latency ({', '.join(names)})", runs) if progress else range(runs)
    for round_index in steps:
        shift = round_index % len(names)  # rotate the order so no variant always runs right after another
        for name in names[shift:] + names[:shift]:
            runner, feed = cases[name]
            for _ in range(settle if len(names) > 1 else 0):
                runner.infer(feed)
            start = time.perf_counter()
            runner.infer(feed)
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: stats_from_times(t, warmup, batch) for name, t in times.items()}
