"""The CLIP job: load -> export both towers -> fuse -> int8 per tower -> build every target -> zero-shot,
retrieval and fidelity on every target -> per-tower latency, round-robin -> report.

Staging and the atomic rename into ``--out`` are the detector pipeline's (``edgekit.pipeline``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import edgekit
from edgekit import progress
from edgekit.artifacts import sha256_bytes, sha256_file, write_json_atomic
from edgekit.backends.graphs import GRAPH_BUILDERS, BuiltGraph, GraphInputs
from edgekit.models.clip.family import TOWERS, ClipFamily
from edgekit.onnx_io import load_onnx, save_onnx
from edgekit.pipeline import BuildContext, _Timer, _versions
from edgekit.recipe import TargetSpec

CHECK_SAMPLES = 4


@dataclass
class ClipData:
    """The evaluation and calibration data of a run, read once and shared by every target."""

    calib_images: list[Path] = field(default_factory=list)
    calib_texts: list[str] = field(default_factory=list)
    zs_images: list[Path] = field(default_factory=list)
    zs_labels: np.ndarray | None = None
    classnames: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    rt_images: list[Path] = field(default_factory=list)
    rt_captions: list[str] = field(default_factory=list)
    rt_index: np.ndarray | None = None
    pixels: dict[Path, np.ndarray] = field(default_factory=dict)  # preprocessed once, reused by every target


@dataclass
class ClipContext(BuildContext):
    data: ClipData = field(default_factory=ClipData)
    modules: dict = field(default_factory=dict)
    graphs: dict[str, GraphInputs] = field(default_factory=dict)
    builds: dict = field(default_factory=dict)  # target name -> {tower: BuiltGraph}


def load_data(ctx: ClipContext) -> None:
    from edgekit.evaluators.retrieval import load_coco_captions
    from edgekit.models.clip.prompts import load_labelled_images, load_templates
    from edgekit.quantization.calibration import calibration_images

    c, q, d = ctx.recipe.clip, ctx.recipe.quantization, ctx.data
    if c.zero_shot:
        z = c.zero_shot
        images, labels, d.classnames = load_labelled_images(Path(z.labels), Path(z.images) if z.images else None)
        d.zs_images, d.zs_labels = images[: z.max_images], labels[: z.max_images]
        d.templates = list(z.templates) if z.templates else load_templates(Path(z.templates_file), z.templates_section)
        ctx.inputs[str(z.labels)] = sha256_file(z.labels)
    if c.retrieval:
        rt = c.retrieval
        images, captions, index = load_coco_captions(Path(rt.captions), [Path(p) for p in rt.images])
        keep = len(images) if rt.max_images is None else rt.max_images
        chosen = index < keep
        d.rt_images, d.rt_captions, d.rt_index = images[:keep], [t for t, k in zip(captions, chosen) if k], index[chosen]
        ctx.inputs[str(rt.captions)] = sha256_file(rt.captions)
    if q is not None:
        d.calib_images = calibration_images(q.calibration.images, q.calibration.count, q.calibration.warn_below)
        ctx.inputs[f"{q.calibration.images} ({len(d.calib_images)} images)"] = sha256_bytes("".join(sha256_file(p) for p in d.calib_images).encode())
    if c.text_calibration:
        tc = c.text_calibration
        folders = [Path(tc.images)] if tc.images else []
        if folders:
            _, texts, _ = load_coco_captions(Path(tc.captions), folders)
        else:
            texts = [a["caption"].strip() for a in json.loads(Path(tc.captions).read_text(encoding="utf-8"))["annotations"]]
        d.calib_texts = texts[: tc.count]
        ctx.inputs[f"{tc.captions} ({len(d.calib_texts)} captions)"] = sha256_bytes("\n".join(d.calib_texts).encode())


def _check_feeds(ctx: ClipContext, tower: str) -> list[dict[str, np.ndarray]]:
    d, family = ctx.data, ctx.family
    if tower == "vision":
        images = (d.rt_images or d.zs_images or d.calib_images)[:CHECK_SAMPLES]
        return [family.image_feed(p) for p in images] or [{"pixel_values": np.random.default_rng(0).standard_normal((1, 3, family.image_size, family.image_size), dtype=np.float32)}]
    texts = (d.rt_captions or d.calib_texts or ["a photo of a cat.", "a diagram", "two dogs playing in the snow", "a red car"])[: CHECK_SAMPLES * 2]
    return [family.text_feed(texts[i : i + 2]) for i in range(0, len(texts), 2)]


def export_stage(ctx: ClipContext) -> None:
    """Load the weights, export each tower to ONNX, check it against PyTorch, run the fusion passes."""
    from edgekit.export import check_against_torch, export_module
    from edgekit.passes import run_passes

    r = ctx.recipe
    family = ctx.family = ClipFamily(context_length=r.clip.context_length)
    with _Timer(ctx, "load"):
        model = family.load(r.model.weights, r.model.config, r.model.tokenizer, r.model.seed)
        for path in (r.model.weights, r.model.config, r.model.tokenizer):
            if path and Path(path).is_file():
                ctx.inputs[str(path)] = sha256_file(path)
        ctx.modules = family.modules(model)
    ctx.settings["model"] = family.provenance
    names = list(r.export.passes) + (["onnxslim"] if r.export.simplify else [])
    for tower in TOWERS:
        raw, fp32 = ctx.stage / f"{tower.name}_fp32_raw.onnx", ctx.stage / f"{tower.name}_fp32.onnx"
        with _Timer(ctx, f"export {tower.name}"):
            export_module(ctx.modules[tower.name], family.example_inputs(tower.name), raw, r.export.opset, tower.input_names, (tower.output_name,), tower.dynamic_axes)
            check = check_against_torch(ctx.modules[tower.name], raw, _check_feeds(ctx, tower.name), r.export.tolerance)
        with _Timer(ctx, f"fuse {tower.name}"):
            fused, results = run_passes(load_onnx(raw), names)
            save_onnx(fused, fp32, {"edgekit_version": edgekit.__version__, "precision": "fp32", "tower": tower.name})
        ctx.settings[f"export {tower.name}"] = {**r.export.model_dump(), "check": check.to_dict(), "passes": [res.__dict__ for res in results]}
        ctx.graphs[tower.name] = GraphInputs(tower.name, fp32, None, "float", torch_module=ctx.modules[tower.name], example_inputs=family.example_inputs(tower.name))


def _static_int8(ctx: ClipContext, tower: str, samples: list, preprocess) -> tuple[Path, dict]:
    from edgekit.pipelines.transformer_int8 import static_transformer_int8

    path = ctx.stage / f"{tower}_int8.onnx"
    settings = static_transformer_int8(ctx.graphs[tower].fp32_onnx, path, samples, preprocess, ctx.recipe.quantization, ctx.recipe.benchmark.threads,
                                       ctx.recipe.clip.smooth_quant, {"tower": tower})
    return path, settings


def quantize_stage(ctx: ClipContext) -> None:
    """Vision: static Q/DQ on the weight MatMuls (image calibration). Text: dynamic int8 MatMuls, or static Q/DQ
    calibrated on captions. LayerNorm, Softmax, GELU, the mask path and the patch embedding stay float."""
    from edgekit.quantization.dynamic import quantize_dynamic_matmul

    c, d, family = ctx.recipe.clip, ctx.data, ctx.family
    if c.vision_int8 == "static":
        with _Timer(ctx, "quantize vision"):
            path, settings = _static_int8(ctx, "vision", d.calib_images, family.image_feed)
        ctx.graphs["vision"] = replace(ctx.graphs["vision"], int8_onnx=path, int8_mode="static", calibration_feeds=lambda: [family.image_feed(p) for p in d.calib_images])
        ctx.settings["quantization vision"] = settings
    if c.text_int8 == "static":
        with _Timer(ctx, "quantize text"):
            path, settings = _static_int8(ctx, "text", d.calib_texts, lambda text: family.text_feed([text]))
        ctx.graphs["text"] = replace(ctx.graphs["text"], int8_onnx=path, int8_mode="static", calibration_feeds=lambda: [family.text_feed([t]) for t in d.calib_texts])
        ctx.settings["quantization text"] = settings
    elif c.text_int8 == "dynamic":
        with _Timer(ctx, "quantize text"):
            path = ctx.stage / "text_int8.onnx"
            # per output channel (quantization.per_channel): on real all-MiniLM-L6-v2 weights per-tensor gave cosine
            # 0.966, per-channel 0.9945 (benchmarks/minilm_int8.py)
            q = ctx.recipe.quantization
            settings = quantize_dynamic_matmul(ctx.graphs["text"].fp32_onnx, path, keep_float=q.keep_float.nodes, per_channel=q.per_channel)
        ctx.graphs["text"] = replace(ctx.graphs["text"], int8_onnx=path, int8_mode="dynamic", calibration_feeds=lambda: [family.text_feed([t]) for t in d.calib_texts])
        ctx.settings["quantization text"] = settings
    if c.text_int8 != "float" and c.embedding_int8:
        _int8_embeddings(ctx, ctx.graphs["text"].int8_onnx)


def _int8_embeddings(ctx: ClipContext, path: Path) -> None:
    """The token embedding table as int8 rows (most of the text tower's bytes), in the int8 text graph."""
    from edgekit.quantization.embedding import quantize_embedding_tables

    model, settings = quantize_embedding_tables(load_onnx(path))
    save_onnx(model, path, {"embedding_tables": json.dumps(settings, sort_keys=True)})
    ctx.settings["quantization text"]["embedding_tables"] = settings


def build_stage(ctx: ClipContext) -> None:
    # LiteRT last: litert-torch loads JAX, whose threads make any later fork unsafe (OpenVINO/NNCF tooling forks)
    for target in sorted(ctx.recipe.targets, key=lambda t: t.backend == "tflite"):
        with _Timer(ctx, f"build {target.name}"):
            ctx.builds[target.name] = {t.name: GRAPH_BUILDERS[target.backend](ctx.recipe, ctx.stage, ctx.graphs[t.name], target) for t in TOWERS}
        reasons = {b.not_built for b in ctx.builds[target.name].values() if b.not_built}
        if reasons:
            progress.log(f"[yellow]{target.name} not built:[/] {'; '.join(sorted(reasons))}")


# --- measurement ---------------------------------------------------------------------------------------------


def _pixels(ctx: ClipContext, path: Path) -> np.ndarray:
    if path not in ctx.data.pixels:
        ctx.data.pixels[path] = ctx.family.image_feed(path)["pixel_values"]
    return ctx.data.pixels[path]


def encode_images(ctx: ClipContext, runner, images: list[Path], label: str, batch: int = 16) -> np.ndarray:
    out = []
    for start in progress.track(label, (len(images) + batch - 1) // batch):
        chunk = images[start * batch : (start + 1) * batch]
        out.append(runner.infer({"pixel_values": np.concatenate([_pixels(ctx, p) for p in chunk])})["image_embeds"])
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def encode_texts(ctx: ClipContext, runner, texts: list[str]) -> np.ndarray:
    batch = ctx.recipe.clip.text_batch
    out = [runner.infer(ctx.family.text_feed(texts[i : i + batch]))["text_embeds"] for i in range(0, len(texts), batch)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def evaluate_target(ctx: ClipContext, name: str, runners: dict) -> dict[str, np.ndarray]:
    """Zero-shot and retrieval embeddings and metrics of one target; returns the embeddings (for fidelity)."""
    from edgekit.evaluators.retrieval import retrieval_recall
    from edgekit.evaluators.zero_shot import class_embeddings, topk_accuracy, zero_shot_scores

    d, out = ctx.data, {}
    metrics: dict[str, float] = {}
    with _Timer(ctx, f"evaluate {name}"):
        if d.zs_images:
            out["class"] = class_embeddings(lambda texts: encode_texts(ctx, runners["text"], texts), d.classnames, d.templates, ctx.recipe.clip.text_batch, progress.track)
            out["zs_image"] = encode_images(ctx, runners["vision"], d.zs_images, f"zero-shot images {name}")
            out["logits"] = zero_shot_scores(out["zs_image"], out["class"])
            metrics.update(topk_accuracy(out["logits"], d.zs_labels))
        if d.rt_images:
            out["rt_image"] = encode_images(ctx, runners["vision"], d.rt_images, f"retrieval images {name}")
            out["caption"] = encode_texts(ctx, runners["text"], d.rt_captions)
            metrics.update(retrieval_recall(out["rt_image"], out["caption"], d.rt_index))
    out["metrics"] = metrics
    return out


def fidelity(reference: dict, ours: dict) -> dict[str, float]:
    """Embedding cosines and zero-shot agreement of a target against the reference target (1.0 = identical)."""
    from edgekit.evaluators.zero_shot import prediction_agreement, topk_overlap

    def mean_cos(key: str) -> dict[str, float]:
        a, b = reference.get(key), ours.get(key)
        if a is None or b is None or not len(a):
            return {}
        cos = np.sum(a * b, axis=1)
        return {"mean": float(cos.mean()), "min": float(cos.min())}

    images = [mean_cos(k) for k in ("zs_image", "rt_image")]
    images = [c for c in images if c]
    out: dict[str, float] = {}
    if images:
        out["image_embedding_cosine"] = float(np.mean([c["mean"] for c in images]))
        out["image_embedding_cosine_min"] = float(min(c["min"] for c in images))
    for key, name in (("caption", "text_embedding_cosine"), ("class", "class_embedding_cosine")):
        if c := mean_cos(key):
            out[name], out[name + "_min"] = c["mean"], c["min"]
    if "logits" in reference and "logits" in ours:
        out["zero_shot_top1_agreement"] = prediction_agreement(reference["logits"], ours["logits"])
        out["zero_shot_top5_overlap"] = topk_overlap(reference["logits"], ours["logits"], 5)
    return out


def _entry(ctx: ClipContext, target: TargetSpec, graphs: dict[str, BuiltGraph]) -> dict:
    from edgekit.profiling.memory import model_size_bytes

    r = ctx.recipe
    reasons = sorted({g.not_built for g in graphs.values() if g.not_built})
    built = not reasons
    components = {
        tower: {
            "model_path": str(g.path.relative_to(ctx.stage)) if g.path else "",
            "precision": g.precision,
            "size_bytes": model_size_bytes(g.path) if g.path else 0,
            "artifact_sha256": sha256_file(g.path) if g.path and g.path.is_file() else None,
            "settings": {"quantization": ctx.settings.get(f"quantization {tower}") if g.precision in ("static", "dynamic") and target.backend == "onnxruntime" else None, "backend": g.settings},
        }
        for tower, g in graphs.items()
    }
    return {
        "name": target.name,
        "backend": target.backend,
        "precision": target.precision,
        "model_path": components["vision"]["model_path"],
        "status": "measured" if built else "not_built",
        "not_built_reason": "; ".join(reasons) or None,
        "files": [str(p.relative_to(ctx.stage)) for g in graphs.values() for p in g.files],
        "metrics": {},
        "batch": 1,
        "threads": r.benchmark.threads,
        "size_bytes": sum(c["size_bytes"] for c in components.values()),
        "components": components,
        "manifest": {
            "versions": _versions(),
            "settings": {
                "model": ctx.settings.get("model"),
                **{k: v for k, v in ctx.settings.items() if k.startswith("export ")},
                "quantization": {t: ctx.settings.get(f"quantization {t}") for t in ("vision", "text")} if target.precision == "int8" else None,
                "clip": r.clip.model_dump(),
                "benchmark": r.benchmark.model_dump(),
            },
            "inputs": dict(ctx.inputs),
            "artifact_sha256": {t: c["artifact_sha256"] for t, c in components.items()},
        },
    }


def _latency_feeds(ctx: ClipContext) -> dict[str, dict[str, np.ndarray]]:
    """One image, and one caption padded to the full context (the fixed shape a device runs)."""
    d = ctx.data
    image = (d.rt_images or d.zs_images or d.calib_images or [None])[0]
    vision = {"pixel_values": _pixels(ctx, image)} if image else _check_feeds(ctx, "vision")[0]
    text = ctx.family.text_feed([(d.rt_captions or d.calib_texts or ["a photo of a cat."])[0]], trim=False)
    return {"vision": vision, "text": text}


def measure_targets(ctx: ClipContext) -> list[dict]:
    from edgekit.profiling.latency import measure_latency_interleaved
    from edgekit.profiling.memory import PeakMemory

    r = ctx.recipe
    order = sorted(r.targets, key=lambda t: (t.precision != "fp32", t.backend != "onnxruntime"))
    entries, runners, reference = {}, {}, None
    try:
        for target in order:
            graphs = ctx.builds[target.name]
            entry = entries[target.name] = _entry(ctx, target, graphs)
            if entry["status"] != "measured":
                continue
            with PeakMemory() as memory:
                pair = {t: g.make_runner() for t, g in graphs.items()}
                for runner in pair.values():
                    runner.load()
                runners.update({f"{target.name}/{t}": run for t, run in pair.items()})
                result = evaluate_target(ctx, target.name, pair)
            entry["peak_memory_mb"] = round(memory.peak_mb, 1)
            if reference is None:
                reference = result
                if ctx.recipe.clip.label_embeddings and "class" in result:
                    _write_label_embeddings(ctx, result["class"], target.name)
            entry["fidelity"] = fidelity(reference, result)
            entry["metrics"] = {k: round(float(v), 5) for k, v in {**result["metrics"], **_gated(entry["fidelity"])}.items()}
        feeds = _latency_feeds(ctx)
        with _Timer(ctx, "latency"):
            cases = {name: (run, feeds[name.rsplit("/", 1)[1]]) for name, run in runners.items()}
            stats = measure_latency_interleaved(cases, r.benchmark.warmup, r.benchmark.runs, 1, progress.enabled()) if cases else {}
    finally:
        for runner in runners.values():
            runner.close()
    for name, s in stats.items():
        target, tower = name.rsplit("/", 1)
        comp = entries[target]["components"][tower]
        comp["latency_ms"] = {k: round(getattr(s, k), 3) for k in ("median", "p90", "p99", "min", "mean")}
        comp["throughput_per_s"] = round(s.throughput_per_s, 2)
    return [entries[t.name] for t in r.targets]


def _gated(fid: dict[str, float]) -> dict[str, float]:
    """The fidelity numbers a budget can gate (means and agreement; the minima stay in ``fidelity``)."""
    return {k: v for k, v in fid.items() if not k.endswith("_min")}


def _write_label_embeddings(ctx: ClipContext, embeddings: np.ndarray, source: str) -> None:
    """``class_embeddings.npy`` (C, E) float32 unit rows, and ``class_embeddings.json`` naming rows and provenance."""
    from edgekit.artifacts import atomic_path

    path = ctx.stage / "class_embeddings.npy"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, embeddings.astype(np.float32))
    write_json_atomic(ctx.stage / "class_embeddings.json", {
        "classes": ctx.data.classnames, "templates": ctx.data.templates, "text_tower": source,
        "shape": list(embeddings.shape), "sha256": sha256_file(path), "usage": "logits = image_embeds @ class_embeddings.T",
    })


def run_clip(ctx: ClipContext) -> list[dict]:
    """Every stage of the CLIP job inside ``ctx.stage``; returns the report's variants."""
    start = time.perf_counter()
    with _Timer(ctx, "data"):
        load_data(ctx)
    export_stage(ctx)
    if any(t.precision == "int8" for t in ctx.recipe.targets):
        quantize_stage(ctx)
    build_stage(ctx)
    variants = measure_targets(ctx)
    ctx.timings["total"] = round(time.perf_counter() - start, 3)
    return variants
