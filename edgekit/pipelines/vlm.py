"""The VLM job: load -> export vision+projector, embedding and KV-cache decoder -> check each against PyTorch and
FP32 greedy generation against PyTorch ``generate`` -> quantize per target -> generate on a fixed prompt set with
every target (fidelity to FP32: teacher-forced token agreement, logit cosine and KL per step) -> time to first token
and decode speed, interleaved -> peak memory per target in a fresh process -> report.

Targets (ONNX Runtime): ``fp32``; ``int8`` (decoder weight-only int8, MatMulNBits); ``int4`` (weight-only int4,
blockwise); ``dynamic`` (dynamic int8 MatMuls). Quantized targets share the static-int8 vision graph and the int8
embedding table.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import edgekit
from edgekit import progress
from edgekit.artifacts import sha256_bytes, sha256_file, write_json_atomic
from edgekit.errors import EdgekitError
from edgekit.models.vlm.family import VlmFamily
from edgekit.onnx_io import load_onnx, save_onnx
from edgekit.pipeline import BuildContext, _Timer, _versions

GRAPHS = ("vision", "embed", "decoder")
CHECK_SAMPLES = 2


@dataclass
class Case:
    """One (image, prompt) of the fixed prompt set, preprocessed once."""

    image: Path
    prompt: str
    input_ids: np.ndarray
    pixel_values: np.ndarray | None


@dataclass
class VlmContext(BuildContext):
    cases: list[Case] = field(default_factory=list)
    caption_cases: list[Case] = field(default_factory=list)
    captions: dict[str, list[str]] = field(default_factory=dict)  # image file name -> reference captions
    calib_images: list[Path] = field(default_factory=list)
    graph_files: dict[str, Path] = field(default_factory=dict)  # "vision_fp32", "decoder_int4", ... -> path
    target_graphs: dict[str, dict[str, str]] = field(default_factory=dict)  # target -> graph -> graph_files key


def _image_files(folder: Path, count: int) -> list[Path]:
    from edgekit.quantization.calibration import IMAGE_SUFFIXES

    if not folder.is_dir():
        raise EdgekitError("image folder not found", folder, "set vlm.images to a folder of JPEG/PNG images (paths may use ${EDGEKIT_ASSETS})")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not files:
        raise EdgekitError("no images in folder", folder, "set vlm.images to a folder of JPEG/PNG images")
    return files


def load_data(ctx: VlmContext) -> None:
    from edgekit.quantization.calibration import calibration_images

    v, q, family = ctx.recipe.vlm, ctx.recipe.quantization, ctx.family
    images = _image_files(Path(v.images), v.max_images)
    ctx.cases = [Case(img, prompt, *family.inputs(img, prompt)) for img in images for prompt in v.prompts]
    ctx.inputs[f"{v.images} ({len(images)} images)"] = sha256_bytes("".join(sha256_file(p) for p in images).encode())
    if _caption_metrics_on(ctx):
        from edgekit.evaluators.retrieval import load_coco_captions

        files, texts, index = load_coco_captions(Path(v.captions), [Path(v.images)])
        by_name = {f.name: [t for t, i in zip(texts, index) if i == k] for k, f in enumerate(files)}
        ctx.captions = {img.name: by_name[img.name] for img in images if img.name in by_name}
        ctx.caption_cases = [Case(img, v.caption_prompt, *family.inputs(img, v.caption_prompt)) for img in images if img.name in ctx.captions]
        ctx.inputs[str(v.captions)] = sha256_file(v.captions)
    if q is not None and any(t.precision != "fp32" for t in ctx.recipe.targets) and v.vision_int8 == "static":
        ctx.calib_images = calibration_images(q.calibration.images, q.calibration.count, q.calibration.warn_below)
        ctx.inputs[f"{q.calibration.images} ({len(ctx.calib_images)} images)"] = sha256_bytes("".join(sha256_file(p) for p in ctx.calib_images).encode())


def _caption_metrics_on(ctx: VlmContext) -> bool:
    v = ctx.recipe.vlm
    if v.caption_metrics == "off" or not v.captions:
        return False
    return v.caption_metrics == "always" or bool(ctx.recipe.model.weights)


# --- export ------------------------------------------------------------------------------------------------------


def _check_feeds(ctx: VlmContext, name: str, model) -> list[dict[str, np.ndarray]]:
    """Real inputs for each graph's PyTorch check: prompt pixels, prompt ids, and a prefill of real embeddings."""
    import torch

    cases = ctx.cases[:CHECK_SAMPLES]
    if name == "vision":
        return [{"pixel_values": c.pixel_values} for c in cases if c.pixel_values is not None]
    if name == "embed":
        return [{"input_ids": c.input_ids} for c in cases]
    layout, feeds = ctx.family.layout, []
    from edgekit.models.vlm.architectures import language_parts

    _, embed, _ = language_parts(model)
    for c in cases:
        with torch.no_grad():
            embeds = embed(torch.from_numpy(c.input_ids)).numpy()
        n = c.input_ids.shape[1]
        feeds.append({"inputs_embeds": embeds, "attention_mask": np.ones((1, n), np.int64), "position_ids": np.arange(n, dtype=np.int64)[None], **layout.empty()})
    return feeds


def export_stage(ctx: VlmContext) -> object:
    """Load the model, export the three graphs, check each against PyTorch, run the fusion passes; returns the model."""
    from edgekit.export import check_against_torch
    from edgekit.models.vlm.graphs import export_vlm, vlm_graphs
    from edgekit.passes import run_passes

    r = ctx.recipe
    with _Timer(ctx, "load"):
        ctx.family, model = VlmFamily.load(r.model.weights, r.model.config, r.model.tokenizer, r.model.seed)
        if r.model.tokenizer and Path(r.model.tokenizer).is_file():
            ctx.inputs[str(r.model.tokenizer)] = sha256_file(r.model.tokenizer)
    ctx.settings["model"] = ctx.family.provenance
    with _Timer(ctx, "data"):
        load_data(ctx)
    raw = ctx.stage / "raw"
    with _Timer(ctx, "export"):
        paths = export_vlm(model, ctx.family.arch, raw, r.export.opset)
    modules = vlm_graphs(model, ctx.family.arch)
    names = list(r.export.passes) + (["onnxslim"] if r.export.simplify else [])
    for name in GRAPHS:
        with _Timer(ctx, f"check {name}"):
            check = check_against_torch(modules[name], paths[name], _check_feeds(ctx, name, model), r.export.tolerance)
        with _Timer(ctx, f"fuse {name}"):
            fused, results = run_passes(load_onnx(paths[name]), names)
            out = ctx.graph_files[f"{name}_fp32"] = ctx.stage / f"{name}_fp32.onnx"
            save_onnx(fused, out, {"edgekit_version": edgekit.__version__, "precision": "fp32", "graph": name})
        ctx.settings[f"export {name}"] = {"check": check.to_dict(), "passes": [res.__dict__ for res in results]}
    for path in paths.values():
        path.unlink(missing_ok=True)
    raw.rmdir()
    return model


def pytorch_generation_check(ctx: VlmContext, model) -> dict:
    """FP32 ONNX greedy tokens against PyTorch ``generate`` on the first prompts (must be identical)."""
    import torch

    from edgekit.models.vlm.generate import generate

    v, family = ctx.recipe.vlm, ctx.family
    runners = _runners(ctx, graphs_of(ctx, "fp32"))
    results = []
    try:
        for case in ctx.cases[: v.pytorch_check]:
            ids = torch.from_numpy(case.input_ids)
            kwargs = {}
            if case.pixel_values is not None:
                pixels = torch.from_numpy(case.pixel_values)
                kwargs["pixel_values"] = pixels[None] if family.arch.name == "idefics3" else pixels
            with torch.no_grad():
                expected = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=v.max_new_tokens, do_sample=False,
                                          eos_token_id=None, pad_token_id=family.eos_token_ids[0] if family.eos_token_ids else None, **kwargs)[0, ids.shape[1]:].tolist()
            got = generate(runners, family.layout, case.input_ids, family.image_token_id, case.pixel_values, v.max_new_tokens).tokens
            same = sum(1 for a, b in zip(expected, got) if a == b) if len(expected) == len(got) else 0
            results.append({"image": case.image.name, "prompt": case.prompt, "tokens": len(expected), "identical_tokens": same, "identical": expected == got})
    finally:
        for runner in runners.values():
            runner.close()
    summary = {"prompts": len(results), "identical_sequences": sum(r["identical"] for r in results), "cases": results}
    if results and summary["identical_sequences"] != len(results):
        progress.log(f"[yellow]FP32 ONNX greedy generation differs from PyTorch on {len(results) - summary['identical_sequences']} of {len(results)} prompts[/]")
    return summary


# --- quantization ------------------------------------------------------------------------------------------------


def quantize_stage(ctx: VlmContext) -> None:
    """One int8 vision graph and one int8 embedding for every quantized target; one decoder per precision."""
    from edgekit.quantization.dynamic import quantize_dynamic_matmul
    from edgekit.quantization.embedding import quantize_embedding_tables
    from edgekit.quantization.weight_only import output_matmuls, quantize_weight_only

    r, v, family = ctx.recipe, ctx.recipe.vlm, ctx.family
    quantized = [t for t in r.targets if t.precision != "fp32"]
    if not quantized:
        return
    files = ctx.graph_files
    if v.vision_int8 == "static":
        from edgekit.pipelines.transformer_int8 import static_transformer_int8

        with _Timer(ctx, "quantize vision"):
            files["vision_int8"] = ctx.stage / "vision_int8.onnx"
            ctx.settings["quantization vision"] = static_transformer_int8(
                files["vision_fp32"], files["vision_int8"], ctx.calib_images, lambda p: {"pixel_values": family.inputs(p, "")[1]},
                r.quantization, r.benchmark.threads, None, {"graph": "vision"})
    if v.embedding == "int8":
        with _Timer(ctx, "quantize embed"):
            model, settings = quantize_embedding_tables(load_onnx(files["embed_fp32"]))
            files["embed_int8"] = ctx.stage / "embed_int8.onnx"
            save_onnx(model, files["embed_int8"], {"edgekit_version": edgekit.__version__, "precision": "int8", "graph": "embed", "embedding_tables": json.dumps(settings, sort_keys=True)})
            ctx.settings["quantization embed"] = settings
    head = output_matmuls(load_onnx(files["decoder_fp32"]), "logits")
    for target in quantized:
        mode = target.precision
        out = files[f"decoder_{mode}"] = ctx.stage / f"decoder_{mode}.onnx"
        with _Timer(ctx, f"quantize decoder {mode}"):
            if mode == "dynamic":
                keep = head if v.lm_head == "float" else []
                settings = quantize_dynamic_matmul(files["decoder_fp32"], out, keep_float=keep, per_channel=r.quantization.per_channel if r.quantization else True)
            else:
                bits = 8 if mode == "int8" else 4
                int8_head = v.lm_head == "int8" and bits == 4
                exclude = head if v.lm_head == "float" or int8_head else []
                settings = quantize_weight_only(files["decoder_fp32"], out, bits, v.block_size, v.symmetric, v.accuracy_level, exclude)
                if int8_head:  # a second pass: the only float weight MatMul left is the lm_head
                    quantize_weight_only(out, out, 8, v.block_size, v.symmetric, v.accuracy_level)
                    settings["lm_head"] = "int8"
            settings["lm_head"] = settings.get("lm_head") or ("float" if v.lm_head == "float" else mode)
            ctx.settings[f"quantization decoder {mode}"] = settings


def graphs_of(ctx: VlmContext, precision: str) -> dict[str, str]:
    """The ``graph_files`` keys a target of ``precision`` runs: its own decoder; the int8 vision and embedding graphs
    when the target is quantized and they were made."""
    q, files = precision != "fp32", ctx.graph_files
    return {
        "vision": "vision_int8" if q and "vision_int8" in files else "vision_fp32",
        "embed": "embed_int8" if q and "embed_int8" in files else "embed_fp32",
        "decoder": f"decoder_{precision}",
    }


# --- measurement -------------------------------------------------------------------------------------------------


def _runners(ctx: VlmContext, graphs: dict[str, str]) -> dict:
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    runners = {g: OnnxRuntimeRunner(ctx.graph_files[key], threads=ctx.recipe.benchmark.threads) for g, key in graphs.items()}
    for runner in runners.values():
        runner.load()
    return runners


def _generate_cases(ctx: VlmContext, runners: dict, cases: list[Case], label: str, reference: list | None) -> list:
    from edgekit.models.vlm.generate import generate

    v, family, out = ctx.recipe.vlm, ctx.family, []
    for i in progress.track(label, len(cases)):
        c = cases[i]
        free = generate(runners, family.layout, c.input_ids, family.image_token_id, c.pixel_values, v.max_new_tokens, family.eos_token_ids, keep_logits=reference is None)
        forced = None
        if reference is not None:
            forced = generate(runners, family.layout, c.input_ids, family.image_token_id, c.pixel_values, v.max_new_tokens, forced=reference[i]["free"].tokens, keep_logits=True)
        out.append({"free": free, "forced": forced or free})
    return out


def evaluate_target(ctx: VlmContext, name: str, runners: dict, reference: list | None) -> tuple[list, dict, dict]:
    """Generations on the prompt set; fidelity to the reference (teacher-forced) and caption metrics."""
    from edgekit.evaluators.generation import generation_fidelity

    with _Timer(ctx, f"evaluate {name}"):
        results = _generate_cases(ctx, runners, ctx.cases, f"generate {name}", reference)
        fid = generation_fidelity([r["free"] for r in reference or results], [r["forced"] for r in results], [r["free"] for r in results])
        metrics: dict[str, float] = {}
        if ctx.caption_cases:
            from edgekit.evaluators.captioning import caption_scores

            gens = _generate_cases(ctx, runners, ctx.caption_cases, f"captions {name}", None)
            candidates = {c.image.name: ctx.family.decode(g["free"].tokens) for c, g in zip(ctx.caption_cases, gens)}
            metrics.update(caption_scores(candidates, {k: ctx.captions[k] for k in candidates}))
    return results, fid, metrics


def _speed(ctx: VlmContext, runners: dict[str, dict]) -> dict[str, dict]:
    """Time to first token and decode tokens/s per target, round-robin over targets (``speed_rounds`` rounds of
    ``speed_tokens`` tokens on the first case, no early stop), after one untimed warm-up each."""
    from edgekit.models.vlm.generate import generate
    from edgekit.profiling.latency import stats_from_times

    v, family, case = ctx.recipe.vlm, ctx.family, ctx.cases[0]
    times: dict[str, dict[str, list[float]]] = {n: {"ttft": [], "tps": []} for n in runners}

    def once(run):
        return generate(run, family.layout, case.input_ids, family.image_token_id, case.pixel_values, v.speed_tokens)

    for run in runners.values():
        once(run)
    for _ in progress.track("speed (interleaved)", v.speed_rounds):
        for name, run in runners.items():
            g = once(run)
            times[name]["ttft"].append(g.ttft_s * 1e3)
            times[name]["tps"].append(g.decode_tokens_per_s)
    out = {}
    for name, t in times.items():
        stats = stats_from_times(t["ttft"], 0, 1)
        out[name] = {"ttft": stats, "decode_tokens_per_s": float(np.median(t["tps"])), "prompt_tokens": int(case.input_ids.shape[1]), "tokens": v.speed_tokens}
    return out


def _entry(ctx: VlmContext, target) -> dict:
    from edgekit.profiling.memory import model_size_bytes

    r, files = ctx.recipe, ctx.graph_files
    graphs = ctx.target_graphs[target.name]
    components = {}
    for g, key in graphs.items():
        path = files[key]
        quant = ctx.settings.get(f"quantization {g}") if key.endswith("int8") and g != "decoder" else ctx.settings.get(f"quantization decoder {target.precision}") if g == "decoder" else None
        components[g] = {
            "model_path": path.name, "precision": key.rsplit("_", 1)[1], "size_bytes": model_size_bytes(path),
            "artifact_sha256": sha256_file(path), "settings": {"quantization": quant},
        }
    return {
        "name": target.name, "backend": target.backend, "precision": target.precision, "model_path": components["decoder"]["model_path"],
        "status": "measured", "files": [c["model_path"] for c in components.values()], "metrics": {}, "batch": 1,
        "threads": r.benchmark.threads, "size_bytes": sum(c["size_bytes"] for c in components.values()), "components": components,
        "manifest": {
            "versions": _versions(),
            "settings": {
                "model": ctx.settings.get("model"),
                **{k: val for k, val in ctx.settings.items() if k.startswith("export ") or k == "pytorch_generation_check"},
                "quantization": {g: c["settings"]["quantization"] for g, c in components.items()},
                "vlm": r.vlm.model_dump(), "benchmark": r.benchmark.model_dump(),
            },
            "inputs": dict(ctx.inputs),
            "artifact_sha256": {g: c["artifact_sha256"] for g, c in components.items()},
        },
    }


def _samples(ctx: VlmContext, results: list, limit: int = 4) -> list[str]:
    return [f"{c.image.name} / {c.prompt!r}: {ctx.family.decode(r['free'].tokens)!r}" for c, r in zip(ctx.cases[:limit], results[:limit])]


def measure_targets(ctx: VlmContext) -> list[dict]:
    from edgekit.models.vlm.memory_probe import peak_memory

    r = ctx.recipe
    order = sorted(r.targets, key=lambda t: t.precision != "fp32")
    entries, runners, reference = {}, {}, None
    try:
        for target in order:
            entry = entries[target.name] = _entry(ctx, target)
            runners[target.name] = _runners(ctx, ctx.target_graphs[target.name])
            results, fid, metrics = evaluate_target(ctx, target.name, runners[target.name], reference)
            reference = reference or results
            entry["fidelity"] = fid
            entry["metrics"] = {k: round(float(val), 6) for k, val in {**metrics, **fid}.items() if not k.endswith("_min") and not k.endswith("_max")}
            entry["notes"] = _samples(ctx, results)
        with _Timer(ctx, "speed"):
            speed = _speed(ctx, runners)
    finally:
        for run in runners.values():
            for runner in run.values():
                runner.close()
    case = ctx.cases[0]
    with _Timer(ctx, "peak memory"):
        for target in order:
            graphs = {g: ctx.graph_files[k] for g, k in ctx.target_graphs[target.name].items()}
            mem = peak_memory(graphs, ctx.family, case.input_ids, case.pixel_values, r.vlm.speed_tokens, r.benchmark.threads)
            entries[target.name]["peak_memory_mb"] = mem["peak_rss_mb"]
            entries[target.name]["metrics"]["peak_memory_delta_mb"] = mem["delta_mb"]
    for name, s in speed.items():
        e = entries[name]
        e["latency_ms"] = {k: round(getattr(s["ttft"], k), 3) for k in ("median", "p90", "p99", "min", "mean")}
        e["throughput_per_s"] = round(s["decode_tokens_per_s"], 2)
        e["metrics"]["ttft_ms"] = round(s["ttft"].median, 3)
        e["metrics"]["decode_tokens_per_s"] = round(s["decode_tokens_per_s"], 2)
        e["manifest"]["settings"]["speed"] = {"prompt_tokens": s["prompt_tokens"], "generated_tokens": s["tokens"], "rounds": r.vlm.speed_rounds, "interleaved": True}
    return [entries[t.name] for t in r.targets]


def run_vlm(ctx: VlmContext) -> list[dict]:
    """Every stage of the VLM job inside ``ctx.stage``; returns the report's variants."""
    start = time.perf_counter()
    model = export_stage(ctx)
    if ctx.recipe.vlm.pytorch_check:
        with _Timer(ctx, "pytorch generation check"):
            ctx.settings["pytorch_generation_check"] = pytorch_generation_check(ctx, model)
    del model
    quantize_stage(ctx)
    ctx.target_graphs = {t.name: graphs_of(ctx, t.precision) for t in ctx.recipe.targets}
    variants = measure_targets(ctx)
    ctx.family.save(ctx.stage)
    meta = json.loads((ctx.stage / "vlm.json").read_text(encoding="utf-8"))
    meta["targets"] = {t: {g: ctx.graph_files[k].name for g, k in graphs.items()} for t, graphs in ctx.target_graphs.items()}
    write_json_atomic(ctx.stage / "vlm.json", meta)
    ctx.timings["total"] = round(time.perf_counter() - start, 3)
    return variants
