"""CLIP towers: how each int8 recipe keeps the embeddings, and what it saves, in one process.

TinyCLIP-ViT-8M-16-Text-3M (the real architecture, random weights: no CLIP weights exist here) exported by the
``recipes/clip.yaml`` stages. Per tower and quantization mode: embedding cosine vs FP32 (mean and min over the 158
COCO evaluation images / their 790 captions), size, and median latency from one interleaved loop on ONNX Runtime
CPU (ratios to FP32 of the same tower). Modes:

* vision: ``static`` (edgekit: Q/DQ on the weight MatMuls), ``static + SmoothQuant``, ``full Q/DQ`` (every float op's
  inputs: MatMul, Add, Mul, Div, Softmax, LayerNormalization, Erf);
* text: ``dynamic per-channel`` (edgekit default: ORT dynamic int8 MatMuls + int8 token table), ``dynamic
  per-tensor``, ``static`` (Q/DQ on the weight MatMuls, calibrated on captions), ``static + SmoothQuant``, ``full Q/DQ``;
* both: FP32 and edgekit's int8 with ``fuse_attention`` (one ORT MultiHeadAttention per block).

    python benchmarks/clip_towers.py [--runs 50] [--out FILE]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edgekit.artifacts import write_json_atomic  # noqa: E402
from edgekit.job import Job  # noqa: E402
from edgekit.onnx_io import save_onnx  # noqa: E402
from edgekit.quantization.graph import non_float_nodes  # noqa: E402
from edgekit.quantization.placement import TRANSFORMER_PLACEMENT, Placement  # noqa: E402
from edgekit.recipe import load_recipe  # noqa: E402

RECIPE = HERE.parent / "recipes" / "clip.yaml"
FULL = Placement(name="full", ops=frozenset({"MatMul", "Gemm", "Add", "Mul", "Div", "Softmax", "LayerNormalization", "Erf"}))


def static(model: onnx.ModelProto, samples: list, feed, placement: Placement, alpha: float | None) -> onnx.ModelProto:
    from edgekit.quantization.ptq import quantize_static
    from edgekit.quantization.smooth_quant import smooth_quant

    if alpha:
        model, _ = smooth_quant(model, samples, feed, alpha=alpha)
    return quantize_static(model, samples, feed, placement=placement, float_nodes=non_float_nodes(model), use_cache=False).model


def variants(job: Job, work: Path) -> dict[str, dict[str, Path]]:
    from edgekit.passes import run_passes
    from edgekit.quantization.dynamic import quantize_dynamic_matmul
    from edgekit.quantization.embedding import quantize_embedding_tables

    d, fam = job.family, job.family.clip
    out: dict[str, dict[str, Path]] = {"vision": {}, "text": {}}
    v32, t32 = job.graphs["vision"].fp32, job.graphs["text"].fp32
    out["vision"]["fp32"], out["text"]["fp32"] = v32, t32
    vm, tm = onnx.load(v32), onnx.load(t32)
    image_feed, text_feed = fam.image_feed, (lambda t: fam.text_feed([t]))
    for name, placement, alpha in [("static", TRANSFORMER_PLACEMENT, None), ("static + SmoothQuant 0.5", TRANSFORMER_PLACEMENT, 0.5), ("full Q/DQ", FULL, None)]:
        out["vision"][name] = save_onnx(static(vm, d.calib_images, image_feed, placement, alpha), work / f"vision_{len(out['vision'])}.onnx")
        out["text"][name] = save_onnx(static(tm, d.calib_texts, text_feed, placement, alpha), work / f"text_{len(out['text'])}.onnx")
    for name, per_channel in [("dynamic per-tensor + int8 table", False), ("dynamic per-channel + int8 table (edgekit default)", True)]:
        path = work / f"text_dyn_{per_channel}.onnx"
        quantize_dynamic_matmul(t32, path, per_channel=per_channel)
        out["text"][name] = save_onnx(quantize_embedding_tables(onnx.load(path))[0], path)
    for tower, base in (("vision", "static"), ("text", "dynamic per-channel + int8 table (edgekit default)")):  # ORT-only fused attention
        for name in ("fp32", base):
            fused, _ = run_passes(onnx.load(out[tower][name]), ["fuse_attention"])
            out[tower][f"{name} + fused attention"] = save_onnx(fused, work / f"{tower}_{len(out[tower])}_mha.onnx")
    return out


def main() -> None:
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner
    from edgekit.profiling.latency import measure_latency_interleaved
    from edgekit.profiling.memory import model_size_bytes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "clip_towers.json")
    args = ap.parse_args()
    recipe = load_recipe(RECIPE)
    recipe.clip.zero_shot = None  # embeddings of the retrieval set only
    work = Path(tempfile.mkdtemp(prefix="clip_towers.", dir=HERE / ".work" if (HERE / ".work").is_dir() else None))
    try:
        job = Job(recipe, RECIPE, work)
        with job.timer("load"):
            job.family.load()  # the model, the retrieval set and the calibration images and captions
        for spec in job.family.graphs():
            job.export(spec)  # exported, checked against PyTorch and fused as the recipe's job does
        paths = variants(job, work)
        d, fam = job.family, job.family.clip
        inputs = {
            "vision": [fam.image_feed(p) for p in d.rt_images],
            "text": [fam.text_feed(d.rt_captions[i : i + 32]) for i in range(0, len(d.rt_captions), 32)],
        }
        key = {"vision": "image_embeds", "text": "text_embeds"}
        rows, cases, runners = {}, {}, []
        for tower, models in paths.items():
            embeds = {}
            for name, path in models.items():
                runner = OnnxRuntimeRunner(path, threads=recipe.benchmark.threads)
                runner.load()
                runners.append(runner)
                embeds[name] = np.concatenate([runner.infer(f)[key[tower]] for f in inputs[tower]])
                cases[f"{tower}/{name}"] = (runner, inputs[tower][0] if tower == "vision" else fam.text_feed(d.rt_captions[:1], trim=False))
            for name, e in embeds.items():
                cos = np.sum(embeds["fp32"] * e, axis=1)
                rows[f"{tower}/{name}"] = {"tower": tower, "mode": name, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "size_mb": model_size_bytes(models[name]) / 1e6}
        stats = measure_latency_interleaved(cases, args.warmup, args.runs, 1, True)
        for name, s in stats.items():
            tower = name.split("/", 1)[0]
            rows[name]["median_ms"] = s.median
            rows[name]["vs_fp32"] = s.median / stats[f"{tower}/fp32"].median
        for runner in runners:
            runner.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = Table(title="CLIP towers on ONNX Runtime CPU (TinyCLIP architecture, random weights)")
    for col in ["tower", "mode", "cosine mean", "cosine min", "MB", "median ms", "latency vs fp32"]:
        table.add_column(col)
    for r in rows.values():
        table.add_row(r["tower"], r["mode"], f"{r['cosine_mean']:.4f}", f"{r['cosine_min']:.4f}", f"{r['size_mb']:.2f}", f"{r['median_ms']:.2f}", f"{r['vs_fp32']:.2f}x")
    Console().print(table)
    write_json_atomic(args.out, {"rows": list(rows.values()), "runs": args.runs, "images": len(d.rt_images), "captions": len(d.rt_captions), "timings_s": job.timings})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
