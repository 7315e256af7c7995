"""The main job: recipe -> FP32 ONNX -> fused ONNX -> INT8 Q/DQ ONNX -> one engine per target -> evaluate and
profile every engine side by side -> report.

Everything is built in a staging folder beside ``--out`` and renamed into place only when the whole run
succeeded, so a failed run never leaves a half-built model or report behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import edgekit
from edgekit import progress
from edgekit.artifacts import sha256_bytes, sha256_file, write_json_atomic
from edgekit.errors import EdgekitError
from edgekit.export import check_against_torch, export_onnx
from edgekit.export.onnx_export import fuse_batchnorm
from edgekit.models import get_family
from edgekit.onnx_io import load_onnx, save_onnx
from edgekit.recipe import Recipe

FP32_RAW, FP32, INT8 = "model_fp32_raw.onnx", "model_fp32.onnx", "model_int8.onnx"


@dataclass
class BuildContext:
    recipe: Recipe
    recipe_path: Path
    stage: Path
    family: object = None
    timings: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)  # input path -> sha256
    artifacts: dict[str, Path] = field(default_factory=dict)  # "fp32" / "int8" -> shared ONNX model path
    settings: dict[str, dict] = field(default_factory=dict)
    samples: list[dict[str, np.ndarray]] = field(default_factory=list)  # a few preprocessed real inputs
    torch_model: object = None  # BN-fused FP32 module (LiteRT converts from PyTorch)
    calibration: list[Path] = field(default_factory=list)
    calibrated_tensors: list[str] = field(default_factory=list)  # one calibration pass covers every placement
    float_nodes: list[str] = field(default_factory=list)  # ONNX nodes the shared spec keeps float
    ranges: dict = field(default_factory=dict)  # tensor -> Range from that pass
    builds: dict = field(default_factory=dict)  # target name -> edgekit.backends.BuiltTarget


class _Timer:
    def __init__(self, ctx: BuildContext, name: str) -> None:
        self.ctx, self.name = ctx, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()
        progress.log(f"[bold]{self.name}[/]")

    def __exit__(self, *exc) -> None:
        self.ctx.timings[self.name] = round(time.perf_counter() - self.start, 3)


def _versions() -> dict[str, str]:
    from edgekit.profiling.device import device_fingerprint

    return {"edgekit": edgekit.__version__, **device_fingerprint()["versions"]}


SAMPLE_COUNT = 8


def _sample_feeds(ctx: BuildContext, count: int = SAMPLE_COUNT) -> list[dict[str, np.ndarray]]:
    """A few real, preprocessed images (evaluation images, else calibration images), read once per run."""
    if not ctx.samples:
        from edgekit.quantization.calibration import IMAGE_SUFFIXES

        r, family = ctx.recipe, ctx.family
        folder = Path(r.evaluation.dataset.images) if r.evaluation else Path(r.quantization.calibration.images) if r.quantization else None
        if folder is None or not folder.is_dir():
            shape = (r.model.batch, 3, family.input_size, family.input_size)
            ctx.samples = [{family.input_name: np.random.default_rng(0).random(shape, dtype=np.float32)}]
        else:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:SAMPLE_COUNT]
            ctx.samples = [family.preprocess(p)[0] for p in files]
    return ctx.samples[:count]


def export_stage(ctx: BuildContext) -> None:
    """Load the weights, export FP32 ONNX, check it against PyTorch, run the fusion passes."""
    from edgekit.passes import run_passes

    r = ctx.recipe
    ctx.family = get_family(r.model.family, input_size=r.model.input_size)
    ctx.family.validate_input_size(ctx.recipe_path)
    with _Timer(ctx, "load"):
        model = ctx.family.load_torch(r.model.weights)
        ctx.inputs[str(r.model.weights)] = sha256_file(r.model.weights)
    ctx.torch_model = fuse_batchnorm(model)
    with _Timer(ctx, "export"):
        raw = export_onnx(model, torch.zeros(r.model.batch, 3, r.model.input_size, r.model.input_size), ctx.stage / FP32_RAW, r.export.opset, r.export.dynamic_batch)
        samples = [feed[ctx.family.input_name] for feed in _sample_feeds(ctx, 4)]
        check = check_against_torch(model, raw, samples, r.export.tolerance)
        ctx.settings["export"] = {**r.export.model_dump(), "check": check.to_dict()}
    with _Timer(ctx, "fuse"):
        names = list(r.export.passes) + (["onnxslim"] if r.export.simplify else [])
        fused, results = run_passes(load_onnx(raw), names)
        ctx.settings["passes"] = {"applied": [res.__dict__ for res in results]}
        save_onnx(fused, ctx.stage / FP32, {"edgekit_version": edgekit.__version__, "precision": "fp32"})
    ctx.artifacts["fp32"] = ctx.stage / FP32


def quantize_stage(ctx: BuildContext) -> None:
    """Calibrate on the recipe's images and write the INT8 Q/DQ model and its spec."""
    from edgekit.quantization.calibration import calibration_images
    from edgekit.quantization.placement import ORT_PLACEMENT, TENSORRT_PLACEMENT
    from edgekit.quantization.ptq import quantize_static, tensors_for_placements

    q = ctx.recipe.quantization
    fp32 = load_onnx(ctx.artifacts["fp32"])
    float_nodes = ctx.float_nodes = (ctx.family.float_nodes(fp32) if q.keep_float.head else []) + q.keep_float.nodes
    placements = [ORT_PLACEMENT] + ([TENSORRT_PLACEMENT] if any(t.name == "tensorrt:int8" for t in ctx.recipe.targets) else [])
    ctx.calibrated_tensors = tensors_for_placements(fp32, placements, float_nodes, q.keep_float.op_types)
    with _Timer(ctx, "quantize"):
        images = ctx.calibration = calibration_images(q.calibration.images, q.calibration.count, q.calibration.warn_below)
        result = quantize_static(
            fp32,
            images,
            preprocess=lambda p: ctx.family.preprocess(p)[0],
            method=q.method,
            percentile=q.percentile,
            per_channel=q.per_channel,
            float_nodes=float_nodes,
            float_ops=q.keep_float.op_types,
            threads=ctx.recipe.benchmark.threads,
            progress=progress.track,
            also_calibrate=ctx.calibrated_tensors,
        )
        ctx.inputs[f"{q.calibration.images} ({len(images)} images)"] = sha256_bytes("".join(sha256_file(p) for p in images).encode())
        settings = result.spec.settings
        save_onnx(result.model, ctx.stage / INT8, {"edgekit_version": edgekit.__version__, "precision": "int8", "quantization": json.dumps(settings, sort_keys=True)})
        write_json_atomic(ctx.stage / "quant_spec.json", result.spec.to_dict())
        ctx.settings["quantization"] = {**q.model_dump(), **settings, "from_cache": result.calibration.from_cache}
        # the ranges of the tensors the shared spec quantizes (not those it only observed, e.g. head conv outputs
        # that feed the float decode: a clipped range there would clip box logits)
        ctx.ranges = {t: rng for t, rng in result.calibration.ranges.items() if t in result.spec.activations}
    ctx.artifacts["int8"] = ctx.stage / INT8


def build_stage(ctx: BuildContext) -> None:
    """Build every target's engine with its backend's builder (``edgekit.backends.BUILDERS``)."""
    from edgekit.backends import BUILDERS, BuildInputs

    inputs = BuildInputs(
        recipe=ctx.recipe, stage=ctx.stage, family=ctx.family, fp32_onnx=ctx.artifacts["fp32"], torch_model=ctx.torch_model,
        int8_onnx=ctx.artifacts.get("int8"), calibration_images=ctx.calibration, float_nodes=ctx.float_nodes,
        calibrated_tensors=ctx.calibrated_tensors, ranges=ctx.ranges, progress=progress.track,
    )
    # LiteRT last: litert-torch loads JAX, whose threads make any later fork unsafe (OpenVINO/NNCF tooling forks)
    builds = {}
    for target in sorted(ctx.recipe.targets, key=lambda t: t.backend == "tflite"):
        with _Timer(ctx, f"build {target.name}"):
            built = BUILDERS[target.backend](inputs, target)
        if not built.built:
            progress.log(f"[yellow]{target.name} not built:[/] {built.not_built}")
        builds[target.name] = built
    ctx.builds = {t.name: builds[t.name] for t in ctx.recipe.targets}  # report in recipe order


def _entry(ctx: BuildContext, built) -> dict:
    """The report entry of one target without measurements: provenance, size, files."""
    from edgekit.profiling.memory import model_size_bytes

    r, target = ctx.recipe, built.target
    path = built.path
    return {
        "name": built.name,
        "backend": target.backend,
        "precision": target.precision,
        "model_path": str(path.relative_to(ctx.stage)) if path else "",
        "status": "measured" if built.built else "not_built",
        "not_built_reason": built.not_built,
        "files": [str(p.relative_to(ctx.stage)) for p in built.files],
        "metrics": {},
        "batch": r.model.batch,
        "threads": r.benchmark.threads,
        "size_bytes": model_size_bytes(path) if path else 0,
        "notes": list(built.notes),
        "manifest": {
            "versions": _versions(),
            "settings": {
                "export": ctx.settings.get("export"),
                "passes": ctx.settings.get("passes"),
                "quantization": ctx.settings.get("quantization") if target.precision == "int8" else None,
                "backend": built.settings,
                "benchmark": r.benchmark.model_dump(),
            },
            "inputs": dict(ctx.inputs),
            "artifact_sha256": sha256_file(path) if path and path.is_file() else None,
        },
    }


def evaluate_target(ctx: BuildContext, entry: dict, runner, reference_outputs: list[dict] | None) -> list[dict]:
    """Accuracy and fidelity of one built target (filled into ``entry``); returns its raw outputs on sample images."""
    from edgekit.evaluators.detection import evaluate_detector, raw_outputs
    from edgekit.evaluators.fidelity import summarize_fidelity

    r = ctx.recipe
    with _Timer(ctx, f"evaluate {entry['name']}"):
        outputs = [ctx.family.join_outputs(o) for o in raw_outputs(runner, _sample_feeds(ctx))]
        entry["fidelity"] = summarize_fidelity(reference_outputs, outputs) if reference_outputs else None
        if r.evaluation:
            ev = r.evaluation
            result = evaluate_detector(
                runner, ctx.family, ev.dataset.images, ev.dataset.annotations, max_images=ev.max_images,
                conf=ev.conf_threshold, iou=ev.iou_threshold, max_det=ev.max_detections, progress=progress.track,
                label=f"evaluate {entry['name']}",
            )
            entry["metrics"] = {k: round(float(v), 5) for k, v in result.metrics.items()}
            entry["per_class_ap"] = {k: round(float(v), 5) for k, v in result.per_class_ap.items()}
    return outputs


def measure_targets(ctx: BuildContext) -> list[dict]:
    """Evaluate every built target, then time them all round-robin in one loop (ratios robust to machine noise)."""
    from edgekit.profiling.latency import measure_latency_interleaved
    from edgekit.profiling.memory import PeakMemory

    r = ctx.recipe
    builds = list(ctx.builds.values())  # recipe order, the reference (ORT fp32, else the first fp32) first
    first = min(builds, key=lambda b: (b.target.precision != "fp32", b.target.backend != "onnxruntime", not b.built))
    order = [first] + [b for b in builds if b is not first]
    entries, runners, reference = [], {}, None
    try:
        for built in order:
            entry = _entry(ctx, built)
            entries.append(entry)
            if not built.built:
                continue
            with PeakMemory() as memory:
                runner = built.make_runner()
                runner.load()
                outputs = evaluate_target(ctx, entry, runner, reference)
            entry["peak_memory_mb"] = round(memory.peak_mb, 1)
            reference = outputs if reference is None and built.target.precision == "fp32" else reference
            runners[entry["name"]] = runner
        feed = {name: np.concatenate([x] * r.model.batch) for name, x in _sample_feeds(ctx, 1)[0].items()}
        with _Timer(ctx, "latency"):
            stats = measure_latency_interleaved({n: (run, feed) for n, run in runners.items()}, r.benchmark.warmup, r.benchmark.runs, r.model.batch, progress.enabled()) if runners else {}
    finally:
        for runner in runners.values():
            runner.close()
    for entry in entries:
        if (s := stats.get(entry["name"])) is not None:
            entry["latency_ms"] = {k: round(getattr(s, k), 3) for k in ("median", "p90", "p99", "min", "mean")}
            entry["throughput_per_s"] = round(s.throughput_per_s, 2)
    return entries


def build_report(ctx: BuildContext, variants: list[dict]):
    from edgekit.profiling.device import device_fingerprint
    from edgekit.reports import Report, evaluate_budgets

    r = ctx.recipe
    budgets = {k: v.model_dump(exclude_none=True) for k, v in r.budgets.items()}
    measured = [v for v in variants if v["status"] == "measured"] or variants
    reference = next((v for v in measured if v["precision"] == "fp32"), measured[0])
    for v in variants:
        if v is not reference and budgets and v["status"] == "measured":
            v["budget"] = [b.model_dump() for b in evaluate_budgets(reference["metrics"], v["metrics"], budgets)]
    return Report(
        edgekit_version=edgekit.__version__,
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        recipe={"name": r.name, "path": str(ctx.recipe_path), "sha256": sha256_file(ctx.recipe_path), "content": r.model_dump()},
        budgets=budgets,
        reference=reference["name"],
        device=device_fingerprint(),
        variants=variants,
        timings_s=ctx.timings,
    )


def deployment_stage(ctx: BuildContext) -> None:
    """Write ``*_nms.onnx`` graphs with NMS inside (detections out), next to each built model."""
    from edgekit.models.yolo.nms_graph import append_nms

    e = ctx.recipe.export
    for path in list(ctx.artifacts.values()):
        model = append_nms(load_onnx(path), e.nms_conf_threshold, e.nms_iou_threshold, e.nms_max_detections, ctx.family.anchor_based)
        save_onnx(model, path.with_name(path.stem + "_nms.onnx"), {"nms": f"conf {e.nms_conf_threshold}, iou {e.nms_iou_threshold}, max {e.nms_max_detections} per image"})


def _prepare_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise EdgekitError("output folder already exists and is not empty", out, "pass --overwrite, or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staging", dir=out.parent))


def run_detector(ctx: BuildContext) -> list[dict]:
    """Every stage of the detector job inside ``ctx.stage``; returns the report's variants."""
    export_stage(ctx)
    if any(t.precision == "int8" for t in ctx.recipe.targets):
        quantize_stage(ctx)
    build_stage(ctx)
    variants = measure_targets(ctx)
    if ctx.recipe.export.nms_in_graph:
        deployment_stage(ctx)
    return variants


def run_recipe(recipe: Recipe, recipe_path: str | Path, out: str | Path, overwrite: bool = False):
    """Run the whole job for ``recipe`` into ``out``; returns the report."""
    from edgekit.reports import write_report

    out = Path(out)
    stage = _prepare_out(out, overwrite)
    if recipe.model.family == "clip":
        from edgekit.pipelines.clip import ClipContext, run_clip

        ctx = ClipContext(recipe, Path(recipe_path), stage)
    elif recipe.model.family == "vlm":
        from edgekit.pipelines.vlm import VlmContext, run_vlm

        ctx = VlmContext(recipe, Path(recipe_path), stage)
    else:
        ctx = BuildContext(recipe, Path(recipe_path), stage)
    ctx.inputs[str(recipe_path)] = sha256_file(recipe_path)
    start = time.perf_counter()
    try:
        if recipe.model.family == "clip":
            variants = run_clip(ctx)
        elif recipe.model.family == "vlm":
            variants = run_vlm(ctx)
        else:
            variants = run_detector(ctx)
        ctx.timings["total"] = round(time.perf_counter() - start, 3)
        report = build_report(ctx, variants)
        write_report(report, stage)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            out.rename(trash / out.name)
            stage.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            stage.rename(out)
        return report
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
