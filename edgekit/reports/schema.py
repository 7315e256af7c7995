"""The report schema: one ``report.json`` per run, read back by ``edgekit check`` and the markdown writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from edgekit.errors import EdgekitError

SCHEMA_VERSION = "1.6"  # 1.6: simulated_metrics beside a measured engine; 1.5: "simulated" variants (accuracy on CPU, no engine), latency samples; 1.2: the integrity record (digest over the report, sha256 of every file it names); 1.3: bootstrap intervals in verdicts; 1.4: tuning
INTERVALS_SINCE = (1, 3)  # reports of this version and later carry bootstrap intervals where the family gives per-sample data
INTEGRITY_SINCE = (1, 2)  # reports of this version and later must carry an integrity record


class LatencyMs(BaseModel):
    """Per-call latency statistics in milliseconds."""

    median: float
    p90: float
    p99: float
    min: float
    mean: float
    samples: list[float] = Field(default_factory=list, description="every timed call in order (ms); report.html plots their distribution")


class BudgetVerdict(BaseModel):
    """One metric of one variant checked against its budget: drop = reference - value for higher-is-better metrics
    (absolute, relative), or the value itself against a ceiling (lower-is-better metrics such as a divergence)."""

    metric: str
    reference_value: float | None = None
    value: float | None = None
    drop: float | None = None
    relative_drop: float | None = None
    limit: float
    kind: Literal["absolute", "relative", "ceiling"]
    passed: bool
    message: str
    # schema 1.3: paired bootstrap interval over the evaluation samples of the gated quantity (the drop, the relative
    # drop, or a ceiling's value); absent where the family gives no per-sample data for the metric (interval_note says why)
    interval: list[float] | None = Field(None, description="[low, high] of the gated quantity at `confidence`")
    confidence: float | None = None
    quantiles: dict[str, float] | None = Field(None, description="bootstrap quantiles of the gated quantity (level -> value): bounds at 0.8/0.9/0.95/0.99")
    resamples: int | None = None
    seed: int | None = None
    sample_count: int | None = Field(None, description="evaluation samples the interval resamples")
    sample_unit: str | None = None
    resolvable: bool | None = Field(None, description="interval width <= 2 x the budget: the set can tell a zero drop from one at the budget")
    samples_needed: int | None = Field(None, description="samples for an interval width of 2 x the budget (width ~ 1/sqrt(n))")
    interval_note: str | None = None


class Component(BaseModel):
    """One graph of a multi-graph variant (a CLIP tower): its file, size and latency."""

    model_path: str
    precision: str
    size_bytes: int
    latency_ms: LatencyMs | None = None
    throughput_per_s: float | None = None
    artifact_sha256: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict, description="how this graph was quantized")


class Variant(BaseModel):
    """One built model (e.g. ``onnxruntime:int8``): accuracy, fidelity, speed, size and provenance."""

    name: str
    backend: str
    precision: str
    model_path: str
    status: Literal["measured", "simulated", "not_built"] = "measured"
    not_built_reason: str | None = None
    simulated_how: str | None = Field(None, description="simulated: how the accuracy was obtained without the engine (latency not measured)")
    files: list[str] = Field(default_factory=list, description="every file this target wrote, relative to the run folder")
    metrics: dict[str, float] = Field(default_factory=dict)
    simulated_metrics: dict[str, float] | None = Field(None, description="a measured engine that also has a CPU simulation (TensorRT with TensorRT present): the simulation's metrics, so the gap between them is reported")
    per_class_ap: dict[str, float] = Field(default_factory=dict)
    fidelity: dict[str, float] | None = None
    latency_ms: LatencyMs | None = None
    throughput_per_s: float | None = None
    batch: int = 1
    threads: int | None = None
    size_bytes: int
    peak_memory_mb: float | None = None
    budget: list[BudgetVerdict] = Field(default_factory=list)
    manifest: dict[str, Any] = Field(default_factory=dict, description="versions, settings, input sha256s, artifact sha256")
    notes: list[str] = Field(default_factory=list)
    components: dict[str, Component] = Field(default_factory=dict, description="per-graph results (CLIP: vision, text)")


class Integrity(BaseModel):
    """Written by ``write_report``: a sha256 over the report's canonical JSON (everything but ``digest`` itself),
    and the sha256 of every file the report names, relative to the run folder. ``edgekit check`` recomputes both.

    The digest detects edits made after the run; it is not a signature: whoever can edit the report can recompute
    it, so it guards against edits, not against forgery."""

    algorithm: Literal["sha256"] = "sha256"
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> sha256 of every file the report names")
    digest: str = Field(description="sha256 of the canonical JSON of the report with integrity.digest left out")


class Report(BaseModel):
    """Everything one run produced; ``reference`` names the FP32 variant budgets are measured against."""

    schema_version: str = SCHEMA_VERSION
    edgekit_version: str
    created_utc: str
    recipe: dict[str, Any] = Field(description="name, path, sha256, content")
    budgets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="metric -> {max_drop | max_relative_drop}")
    reference: str
    device: dict[str, Any] = Field(default_factory=dict)
    variants: list[Variant]
    timings_s: dict[str, float] = Field(default_factory=dict)
    tuning: dict[str, Any] | None = Field(None, description="which images chose settings (tuning) and which measured them (evaluation); "
                                          "per graph: range candidates scored, search trace (schema 1.4 on)")
    integrity: Integrity | None = Field(None, description="digest and file hashes (schema 1.2 on); absent in older reports")

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


_FIX_REGENERATE = "pass the report.json written by `edgekit export`, or re-run `edgekit export` to regenerate it"


def report_file(path: str | Path) -> Path:
    """``path`` itself, or ``path/report.json`` when ``path`` is a run folder holding one."""
    path = Path(path)
    return path / "report.json" if path.is_dir() and (path / "report.json").is_file() else path


def load_report(path: str | Path) -> Report:
    """Read and validate ``report.json``; any problem becomes an ``EdgekitError`` naming the file and the fix."""
    path = report_file(path)
    if not path.is_file():
        raise EdgekitError("report not found", path, _FIX_REGENERATE)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise EdgekitError("report is not UTF-8 text", path, _FIX_REGENERATE) from exc
    except json.JSONDecodeError as exc:
        raise EdgekitError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", path, _FIX_REGENERATE) from exc
    if not isinstance(data, dict):
        raise EdgekitError("not an edgekit report (expected a JSON object)", path, _FIX_REGENERATE)
    version = str(data.get("schema_version", SCHEMA_VERSION))
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise EdgekitError(
            f"unsupported report schema_version {version!r} (this edgekit reads {SCHEMA_VERSION})",
            path,
            "use the edgekit version that wrote it, or re-run `edgekit export`",
        )
    try:
        return Report.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        what = f"missing key '{key}'" if err["type"] == "missing" else f"bad value for '{key}': {err['msg']}"
        raise EdgekitError(f"not a valid edgekit report: {what}", path, _FIX_REGENERATE) from exc
