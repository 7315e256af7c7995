"""Does a measured budget search beat plain PTQ? YOLOv5n 640, ONNX Runtime INT8 placement, real COCO images.

Rows (all from one export, ranges from the 109 calibration images ``coco_val2017_subset/calib_images``; the tuning
loss is scored on the first ``--tune`` of them (default 32 to keep the run short on a shared 2-core machine; 109 =
all); the head decode stays float in every row):

* ``PTQ today``: percentile 99.99 ranges (edgekit's default);
* ``stronger PTQ``: MSE ranges;
* ``PTQ + search (same loss)``: MSE ranges + :func:`edgekit.tuning.search.search` with ``max_loss_pt`` = the
  stronger PTQ's tuning loss (something faster at no worse tuning loss);
* ``PTQ + search (loss - 1)``: the same with ``max_loss_pt`` one point lower (accuracy recovery).

Both searches share one sensitivity table (float-only part, latency cost from ORT's profiler). Tuning loss =
``100 (1 - pseudo_map@0.5)`` against FP32's detections on the tuning images (:class:`DetectionScorer`). The 158
labelled evaluation images (``coco_val2017_subset/images``) only measure: the true mAP50-95 drop vs FP32 with its
paired bootstrap 95% interval (1000 image resamples, ``edgekit.evaluators.bootstrap``); no choice reads them
(``check_disjoint`` refuses overlapping bytes). Latency: median of every row and FP32 in one interleaved ORT run.

    python benchmarks/budget_search.py [--size 640] [--threads 2] [--time-limit 240] [--runs 30] [--tune 32] [--max-calib N] [--max-eval N] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import onnx
import onnxslim
import torch
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from edgekit.artifacts import write_json_atomic  # noqa: E402
from edgekit.assets import assets_dir  # noqa: E402
from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner  # noqa: E402
from edgekit.evaluators.bootstrap import paired_interval  # noqa: E402
from edgekit.evaluators.coco import load_coco_images  # noqa: E402
from edgekit.evaluators.detection import evaluate_detector  # noqa: E402
from edgekit.export import export_onnx  # noqa: E402
from edgekit.models.yolo.family import YoloFamily  # noqa: E402
from edgekit.profiling.device import device_fingerprint  # noqa: E402
from edgekit.profiling.latency import measure_latency_interleaved  # noqa: E402
from edgekit.quantization.calibration import collect_ranges  # noqa: E402
from edgekit.quantization.placement import ORT_PLACEMENT, quantized_nodes, tensors_to_quantize  # noqa: E402
from edgekit.quantization.ptq import calibration_settings, place  # noqa: E402
from edgekit.tuning.groups import quantizer_groups  # noqa: E402
from edgekit.tuning.proxy import check_disjoint  # noqa: E402
from edgekit.tuning.scorer import DetectionScorer  # noqa: E402
from edgekit.tuning.search import search  # noqa: E402
from edgekit.tuning.sensitivity import sensitivity  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=240, help="seconds per search (the shared sensitivity table is extra)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs of the final interleaved latency loop")
    parser.add_argument("--search-runs", type=int, default=15, help="timed runs per candidate inside the search")
    parser.add_argument("--max-calib", type=int, default=None, help="first N calibration images only (quick run)")
    parser.add_argument("--tune", type=int, default=32, help="tuning images the scorer uses: the first N calibration images (109: all)")
    parser.add_argument("--max-eval", type=int, default=None, help="first N evaluation images only (quick run)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "budget_search.json")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "budget_search")
    return parser.parse_args()


def calibrate(model, tensors, images, family, method: str, threads: int) -> tuple[dict, dict, float]:
    """(ranges, calibration settings, seconds) of one range method over the tuning images."""
    t0 = time.perf_counter()
    calib = collect_ranges(model, tensors, images, lambda p: family.preprocess(p)[0], method, 99.99, threads, None, True)
    return calib.ranges, calibration_settings(method, 99.99, True, len(images), calib.key), round(time.perf_counter() - t0, 1)


def main() -> None:
    args = parse_args()
    console = Console(width=200)
    t_start = time.perf_counter()
    assets = assets_dir()
    coco = assets / "coco_val2017_subset"
    annotations, eval_dir = coco / "annotations" / "instances_val2017_subset.json", coco / "images"
    calib = sorted((coco / "calib_images").iterdir())[: args.max_calib or None]
    tune = calib[: args.tune]
    check_disjoint(calib, [p for _, p in load_coco_images(annotations, eval_dir)])
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    os.environ["EDGEKIT_CACHE"] = str(args.work / "cache")
    torch.set_num_threads(args.threads)

    family = YoloFamily(input_size=args.size)
    torch_model = family.load_torch(assets / "yolo" / "yolov5n.safetensors")
    raw = export_onnx(torch_model, torch.zeros(1, 3, args.size, args.size), args.work / "fp32_raw.onnx")
    model = onnxslim.slim(onnx.load(str(raw)))
    fp32 = args.work / "fp32.onnx"
    onnx.save(model, str(fp32))
    decode = family.float_nodes(model)
    tensors = tensors_to_quantize(model, quantized_nodes(model, ORT_PLACEMENT, decode, []))
    scorer = DetectionScorer(fp32, tune, family, args.threads)
    timings: dict[str, float] = {}

    paths: dict[str, Path] = {"FP32": fp32}
    rows: dict[str, dict] = {"FP32": {"float_groups": "all", "tuning_loss_pt": 0.0}}
    ranges_by = {}
    for name, method in (("PTQ today (p99.99)", "percentile"), ("stronger PTQ (mse)", "mse")):
        console.log(f"[bold]{name}[/]: calibrate {len(tensors)} tensors on {len(calib)} images")
        ranges, settings, secs = calibrate(model, tensors, calib, family, method, args.threads)
        ranges_by[method] = (ranges, settings)
        qdq, _ = place(model, ORT_PLACEMENT, ranges, decode, [], settings)
        paths[name] = args.work / f"{method}.onnx"
        onnx.save(qdq, str(paths[name]))
        rows[name] = {"float_groups": "decode", "tuning_loss_pt": scorer.loss_pt(scorer.score(paths[name])), "calibrate_s": secs}
        console.log(f"  tuning loss {rows[name]['tuning_loss_pt']:.2f} pt")

    ranges, settings = ranges_by["mse"]
    groups = quantizer_groups(model, ORT_PLACEMENT, decode, [])
    console.log(f"sensitivity of {len(groups)} groups (float-only, ORT profiler latency)")
    t0 = time.perf_counter()
    table = sensitivity(model, ORT_PLACEMENT, ranges, decode, [], settings, scorer, groups, args.work / "cands", args.threads,
                        args.search_runs, quantized_only=False)
    timings["sensitivity_s"] = round(time.perf_counter() - t0, 1)
    console.print(table.render(limit=15))
    searches = {}
    stronger = rows["stronger PTQ (mse)"]["tuning_loss_pt"]
    for name, budget in (("PTQ + search (same loss)", stronger), ("PTQ + search (loss - 1)", stronger - 1.0)):
        console.log(f"[bold]{name}[/]: max_loss_pt {budget:.2f}, time limit {args.time_limit:g} s")
        res = search(model, ORT_PLACEMENT, ranges, decode, [], settings, scorer, groups, budget, args.work / "cands", args.threads,
                     time_limit_s=args.time_limit, sensitivity=table, latency_runs=args.search_runs)
        console.print(res.render())
        searches[name] = res
        qdq, _ = place(model, ORT_PLACEMENT, ranges, decode + res.float_nodes, [], settings)
        paths[name] = args.work / f"search_{len(searches)}.onnx"
        onnx.save(qdq, str(paths[name]))
        rows[name] = {"float_groups": res.float_groups, "tuning_loss_pt": res.loss_pt, "max_loss_pt": round(budget, 4), "met": res.met,
                      "search_s": res.seconds, "search_stopped": res.stopped, "candidates": len(res.trace),
                      "tuning_loss_rescored_pt": scorer.loss_pt(scorer.score(paths[name]))}

    console.log(f"evaluating {len(paths)} models on the labelled evaluation images")
    runners = {name: OnnxRuntimeRunner(p, threads=args.threads) for name, p in paths.items()}
    for r in runners.values():
        r.load()
    results = {}
    t0 = time.perf_counter()
    for name, runner in runners.items():
        results[name] = evaluate_detector(runner, family, eval_dir, annotations, max_images=args.max_eval)
    timings["evaluate_s"] = round(time.perf_counter() - t0, 1)
    ref = results["FP32"]
    for name, res in results.items():
        row = rows[name]
        row["mAP50-95"], row["mAP50"] = round(res.metrics["mAP50-95"], 4), round(res.metrics["mAP50"], 4)
        if name != "FP32":
            iv = paired_interval(ref.records.metric("mAP50-95"), res.records.metric("mAP50-95"))
            row["drop_pt"] = round(100 * (ref.metrics["mAP50-95"] - res.metrics["mAP50-95"]), 2)
            row["drop_ci95_pt"] = [round(100 * iv.low, 2), round(100 * iv.high, 2)]
    console.log(f"latency: {len(runners)} models interleaved, {args.runs} runs")
    feed = family.preprocess(tune[0])[0]
    stats = measure_latency_interleaved({n: (r, feed) for n, r in runners.items()}, warmup=5, runs=args.runs)
    for name, st in stats.items():
        rows[name]["latency_ms"] = round(st.median, 2)
        rows[name]["latency_p90_ms"] = round(st.p90, 2)
        rows[name]["ratio_vs_fp32"] = round(st.median / stats["FP32"].median, 3)
    for r in runners.values():
        r.close()

    out = Table(title=f"YOLOv5n {args.size} ORT INT8: ranges from {len(calib)} calibration images, tuning loss on the first {len(tune)} of them, "
                      f"true drop on {ref.num_images} evaluation images")
    for col in ("variant", "float groups", "tuning loss pt", "mAP50-95", "drop pt [95% CI]", "latency ms", "x FP32", "search s"):
        out.add_column(col, justify="left" if col in ("variant", "float groups") else "right")
    for name, r in rows.items():
        fg = r["float_groups"]
        fg = fg if isinstance(fg, str) else "decode + " + (", ".join(fg) if len(fg) <= 3 else f"{len(fg)} groups") if fg else "decode"
        drop = f"{r['drop_pt']:+.2f} [{r['drop_ci95_pt'][0]:+.2f}, {r['drop_ci95_pt'][1]:+.2f}]" if "drop_pt" in r else "ref"
        out.add_row(name, fg, f"{r['tuning_loss_pt']:.2f}", f"{r['mAP50-95']:.4f}", drop, f"{r['latency_ms']:.1f}", f"{r['ratio_vs_fp32']:.2f}",
                    f"{r['search_s']:.0f}" if "search_s" in r else "-")
    console.print(out)
    console.print("tuning loss = 100 (1 - pseudo mAP50-95 vs FP32's detections at conf 0.5) on the tuning images; drop = FP32 - variant mAP50-95 "
                  "on the evaluation images (paired bootstrap, 1000 resamples); latency from one interleaved ORT loop")
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    payload = {
        "benchmark": "budget_search",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {"size": args.size, "threads": args.threads, "calibration_images": len(calib), "tuning_images": len(tune), "eval_images": ref.num_images,
                     "time_limit_s": args.time_limit, "runs": args.runs, "search_runs": args.search_runs, "scorer": scorer.description,
                     "groups": len(groups), "command": " ".join(sys.argv)},
        "device": device_fingerprint(),
        "timings_s": timings,
        "rows": rows,
        "sensitivity": table.to_dict(),
        "searches": {name: res.to_dict() for name, res in searches.items()},
    }
    write_json_atomic(args.out, payload)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
