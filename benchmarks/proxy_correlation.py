"""Does a label-free tuning proxy predict the real INT8 mAP drop? YOLOv5n, ONNX Runtime, real COCO images.

A family of static INT8 candidates of varying quality is built from one calibration pass over the 109 calibration
images (``coco_val2017_subset/calib_images``): MinMax, entropy, MSE and percentile 99 / 99.9 / 99.99 / 99.999
ranges, per-channel vs per-tensor weights, the head decode kept float (edgekit's default) vs the whole head kept
float vs nothing kept float (zero detections: the degenerate case), and ranges from only the first 8 images. Every
candidate and FP32 run on every evaluation image (158, labelled) and every calibration image (109, no labels),
ORT CPU, conf 0.001, class-wise NMS 0.65, 300 detections (as ``edgekit.evaluators.detection``).

For each candidate: the true drop (FP32 mAP50-95 - candidate mAP50-95, points, pycocotools against the real boxes)
on the measuring images, and label-free proxies on the tuning images (``edgekit.tuning.proxy``):
``pseudo_map@c`` (mAP50-95 against FP32's detections scoring >= c as ground truth; drop = 100 (1 - value)),
``pseudo_map50@0.25``, ``box_agreement@0.25``, ``score_cosine`` (objectness x class score per anchor) and
``output_cosine`` (raw output; drop = 100 (1 - cosine)). Splits:

* ``calib->eval``: tune on the 109 calibration images, measure on the 158 evaluation images (the default setup);
* ``halves``: the 158 evaluation images split in two halves at random (``--seeds`` seeds, both directions): proxy on
  one half without its labels, true drop on the other. ``labelled_half`` is the reference: the true drop measured on
  the tuning half with its labels (what a labelled tuning set of that size would give).

Per proxy and split: Pearson and Spearman correlation of proxy drop vs true drop over the candidates, and the regret
of choosing by the proxy (true drop of the proxy's best candidate minus the smallest true drop, points); reported
over all candidates and without the degenerate one (its huge drop inflates every correlation).

    python benchmarks/proxy_correlation.py [--size 640] [--threads 2] [--seeds 5] [--jobs 2] [--max-eval N] [--max-tune N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxslim
import torch
from rich.console import Console
from rich.table import Table
from scipy import stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from edgekit.artifacts import write_json_atomic  # noqa: E402
from edgekit.assets import assets_dir  # noqa: E402
from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner  # noqa: E402
from edgekit.evaluators.coco import coco_category_ids, load_coco_images  # noqa: E402
from edgekit.export import export_onnx  # noqa: E402
from edgekit.models.yolo.family import YoloFamily  # noqa: E402
from edgekit.models.yolo.processing import to_coco  # noqa: E402
from edgekit.profiling.device import device_fingerprint  # noqa: E402
from edgekit.quantization.calibration import observe_model  # noqa: E402
from edgekit.quantization.observers import Histogram, MinMax, final_range  # noqa: E402
from edgekit.quantization.placement import ORT_PLACEMENT, quantized_nodes, tensors_to_quantize  # noqa: E402
from edgekit.quantization.ptq import calibration_settings, place  # noqa: E402
from edgekit.tuning.proxy import (  # noqa: E402
    box_agreement,
    check_disjoint,
    class_scores,
    coco_from_dict,
    flat_cosine,
    map_by_subset,
    output_cosine,
    pseudo_ground_truth,
)

PSEUDO_CONFS = (0.1, 0.25, 0.5)
FEW = 8  # calibration images of the "few images" candidates
CALIB_ID0 = 10_000_000  # pseudo image ids of the (unlabelled) calibration images

# name -> (method, percentile, per-channel weights, float scope, calibration images: "all" or "few")
CANDIDATES = {
    "p99.99 pc decode-float (edgekit default)": ("percentile", 99.99, True, "decode", "all"),
    "p99.999 pc": ("percentile", 99.999, True, "decode", "all"),
    "p99.9 pc": ("percentile", 99.9, True, "decode", "all"),
    "p99 pc": ("percentile", 99.0, True, "decode", "all"),
    "minmax pc": ("minmax", 0.0, True, "decode", "all"),
    "entropy pc": ("entropy", 0.0, True, "decode", "all"),
    "mse pc": ("mse", 0.0, True, "decode", "all"),
    "p99.99 per-tensor": ("percentile", 99.99, False, "decode", "all"),
    "minmax per-tensor": ("minmax", 0.0, False, "decode", "all"),
    "p99.99 pc head-float": ("percentile", 99.99, True, "head", "all"),
    "minmax pc 8 images": ("minmax", 0.0, True, "decode", "few"),
    "p99.99 pc 8 images": ("percentile", 99.99, True, "decode", "few"),
    "minmax pc nothing float (degenerate)": ("minmax", 0.0, True, "none", "all"),
}
DEGENERATE = "minmax pc nothing float (degenerate)"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=640, help="input side (letterbox)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--seeds", type=int, default=5, help="random halvings of the evaluation images (each used in both directions)")
    parser.add_argument("--jobs", type=int, default=2, help="processes for the COCO evaluations")
    parser.add_argument("--max-eval", type=int, default=None, help="first N evaluation images only (quick run)")
    parser.add_argument("--max-tune", type=int, default=None, help="first N calibration images only (quick run; also calibrates on them)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "proxy_correlation.json")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "proxy_correlation", help="where the models are written (git-ignored)")
    return parser.parse_args()


def calibrate(model: onnx.ModelProto, tensors: list[str], images: list[Path], prep, threads: int) -> dict[str, dict]:
    """One MinMax pass and one histogram pass over ``images`` (and separately over the first ``FEW``): the ranges of
    every candidate's method come from these observers (as ``collect_ranges`` computes them, without repeating
    the passes per method)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(observe_model(model, tensors), options, providers=["CPUExecutionProvider"])
    obs = {s: {"minmax": {t: MinMax() for t in tensors}} for s in ("all", "few")}
    for i, path in enumerate(images):
        values = session.run(tensors, prep(path))
        for t, v in zip(tensors, values):
            obs["all"]["minmax"][t].update(v)
            if i < FEW:
                obs["few"]["minmax"][t].update(v)
    for s in obs:
        obs[s]["hist"] = {t: Histogram(m.low, m.high) for t, m in obs[s]["minmax"].items()}
    for i, path in enumerate(images):
        values = session.run(tensors, prep(path))
        for t, v in zip(tensors, values):
            obs["all"]["hist"][t].update(v)
            if i < FEW:
                obs["few"]["hist"][t].update(v)
    return obs


def _evaluate(job: tuple[str, str, dict, list, dict]) -> tuple[str, str, dict]:
    model, truth_name, truth, dets, subsets = job
    return model, truth_name, map_by_subset(coco_from_dict(truth), dets, subsets)


def correlate(proxy: list[float], true: list[float]) -> dict:
    p, t = np.asarray(proxy, dtype=np.float64), np.asarray(true, dtype=np.float64)
    best = int(np.argmin(p))
    out = {"regret_pt": round(float(t[best] - t.min()), 3), "picked_best": bool(t[best] <= t.min() + 1e-12)}
    if np.ptp(p) == 0 or np.ptp(t) == 0:
        return {"pearson": None, "spearman": None, **out}
    return {"pearson": round(float(stats.pearsonr(p, t)[0]), 4), "spearman": round(float(stats.spearmanr(p, t)[0]), 4), **out}


def main() -> None:
    args = parse_args()
    console = Console(width=200)
    t_start = time.perf_counter()
    assets = assets_dir()
    coco = assets / "coco_val2017_subset"
    annotations = coco / "annotations" / "instances_val2017_subset.json"
    calib = sorted((coco / "calib_images").iterdir())[: args.max_tune or None]
    items = load_coco_images(annotations, coco / "images")[: args.max_eval or None]
    check_disjoint(calib, [p for _, p in items])  # tuning (calibration) images are never evaluation images
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    category_ids = coco_category_ids(annotations)
    timings: dict[str, float] = {}

    family = YoloFamily(input_size=args.size)
    torch_model = family.load_torch(assets / "yolo" / "yolov5n.safetensors")
    raw = export_onnx(torch_model, torch.zeros(1, 3, args.size, args.size), args.work / "fp32_raw.onnx")
    fp32_model = onnxslim.slim(onnx.load(str(raw)))
    fp32 = args.work / "fp32.onnx"
    onnx.save(fp32_model, str(fp32))
    prep = lambda p: family.preprocess(p)[0]  # noqa: E731
    scopes = {"decode": family.float_nodes(fp32_model), "head": family.head_nodes(fp32_model), "none": []}
    tensors = sorted({t for nodes in scopes.values() for t in tensors_to_quantize(fp32_model, quantized_nodes(fp32_model, ORT_PLACEMENT, nodes, []))})

    t0 = time.perf_counter()
    console.log(f"calibrating {len(tensors)} tensors on {len(calib)} images (MinMax + histogram passes)")
    obs = calibrate(fp32_model, tensors, calib, prep, args.threads)
    timings["calibration_s"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    paths: dict[str, Path] = {"FP32": fp32}
    recipes: dict[str, dict] = {"FP32": {}}
    for k, (name, (method, pct, per_channel, scope, which)) in enumerate(CANDIDATES.items()):
        o = obs[which]
        try:
            ranges = {t: final_range(method, o["minmax"][t], o["hist"][t], pct) for t in tensors}
        except (ValueError, AttributeError) as exc:  # a method this checkout's observers lack
            console.log(f"[yellow]skipping {name}[/yellow]: {exc}")
            continue
        n_images = FEW if which == "few" else len(calib)
        qdq, _ = place(fp32_model, ORT_PLACEMENT, ranges, scopes[scope], [], calibration_settings(method, pct, per_channel, n_images, "benchmark"))
        paths[name] = args.work / f"cand{k:02d}.onnx"
        onnx.save(qdq, str(paths[name]))
        recipes[name] = {"method": method, "percentile": pct if method == "percentile" else None, "per_channel": per_channel,
                         "float_scope": {"decode": "head decode (YoloFamily.float_nodes)", "head": "whole head (YoloFamily.head_nodes)", "none": "nothing"}[scope],
                         "calibration_images": n_images}
    timings["build_candidates_s"] = round(time.perf_counter() - t0, 1)
    runners = {}
    for name, path in paths.items():
        runners[name] = OnnxRuntimeRunner(path, threads=args.threads)
        runners[name].load()

    # Every model on every image: detections (COCO format) and per-image cosines against FP32.
    images = [(i, p, "eval") for i, p in items] + [(CALIB_ID0 + k, p, "calib") for k, p in enumerate(calib)]
    dets: dict[str, list[dict]] = {name: [] for name in paths}
    cos: dict[str, dict[str, dict[int, float]]] = {name: {"output_cosine": {}, "score_cosine": {}} for name in paths}
    sizes: dict[int, tuple[int, int]] = {}
    infer_s = dict.fromkeys(paths, 0.0)
    t0 = time.perf_counter()
    console.log(f"running {len(paths)} models on {len(images)} images at {args.size} px")
    for n, (image_id, path, _) in enumerate(images):
        feed, meta = family.preprocess(path)
        sizes[image_id] = meta.original_hw
        ref = ref_scores = None
        for name, runner in runners.items():
            s = time.perf_counter()
            out = runner.infer(feed)
            infer_s[name] += time.perf_counter() - s
            scores = class_scores(family.join_outputs(out)[family.output_name])
            if ref is None:
                ref, ref_scores = out, scores.astype(np.float64)
            cos[name]["output_cosine"][image_id] = output_cosine(ref, out)
            cos[name]["score_cosine"][image_id] = flat_cosine(ref_scores, scores)  # = score_cosine(ref, out), ref's scores computed once
            dets[name].extend(to_coco(family.postprocess(out, meta), image_id, category_ids))
        if n % 25 == 0:
            console.log(f"  image {n + 1}/{len(images)} ({time.perf_counter() - t0:.0f} s)")
    timings["inference_s"] = round(time.perf_counter() - t0, 1)
    timings["ort_infer_ms_per_image"] = {name: round(1000 * s / len(images), 1) for name, s in infer_s.items()}

    # Subsets of image ids: all, calibration, and random halves of the evaluation images.
    eval_ids = [i for i, _, role in images if role == "eval"]
    calib_ids = [i for i, _, role in images if role == "calib"]
    subsets = {"eval": eval_ids, "calib": calib_ids}
    for seed in range(args.seeds):
        perm = np.random.default_rng(seed).permutation(eval_ids)
        half = len(perm) // 2
        subsets[f"s{seed}A"], subsets[f"s{seed}B"] = sorted(int(i) for i in perm[:half]), sorted(int(i) for i in perm[half:])
    eval_subsets = {k: v for k, v in subsets.items() if k != "calib"}

    t0 = time.perf_counter()
    truths = {"labels": json.loads(annotations.read_text())}
    for c in PSEUDO_CONFS:
        truths[f"pseudo@{c}"] = pseudo_ground_truth(dets["FP32"], sizes, c, category_ids)
    jobs = [(name, "labels", truths["labels"], dets[name], eval_subsets) for name in paths]
    jobs += [(name, t, truths[t], dets[name], subsets) for name in paths if name != "FP32" for t in truths if t != "labels"]
    console.log(f"{len(jobs)} COCO evaluations on {args.jobs} processes")
    maps: dict[str, dict[str, dict]] = {name: {} for name in paths}
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for name, truth_name, result in pool.map(_evaluate, jobs):
                maps[name][truth_name] = result
    else:
        for job in jobs:
            name, truth_name, result = _evaluate(job)
            maps[name][truth_name] = result
    timings["coco_evaluation_s"] = round(time.perf_counter() - t0, 1)

    # Per candidate and subset: true mAP, and each proxy's drop (0 = FP32 itself).
    def by_subset(key: str, name: str) -> dict[str, float]:
        ids = subsets[key]
        keep = set(ids)
        ref = [d for d in dets["FP32"] if d["image_id"] in keep]
        cand = [d for d in dets[name] if d["image_id"] in keep]
        out = {f"pseudo_map@{c}": 100 * (1 - maps[name][f"pseudo@{c}"][key]["mAP50-95"]) for c in PSEUDO_CONFS}
        out["pseudo_map50@0.25"] = 100 * (1 - maps[name]["pseudo@0.25"][key]["mAP50"])
        out["box_agreement@0.25"] = 100 * (1 - box_agreement(ref, cand, 0.25))
        for metric in ("score_cosine", "output_cosine"):
            out[metric] = 100 * (1 - float(np.mean([cos[name][metric][i] for i in ids])))
        return out

    t0 = time.perf_counter()
    candidates = [n for n in paths if n != "FP32"]
    rows: dict[str, dict] = {}
    for name in paths:
        truth = maps[name]["labels"]
        rows[name] = {"recipe": recipes[name], "mAP50_95": {k: round(v["mAP50-95"], 4) for k, v in truth.items()},
                      "mAP50": {k: round(v["mAP50"], 4) for k, v in truth.items()}, "detections": len(dets[name])}
    for name in candidates:
        rows[name]["true_drop_pt"] = {k: round(100 * (maps["FP32"]["labels"][k]["mAP50-95"] - maps[name]["labels"][k]["mAP50-95"]), 3) for k in eval_subsets}
        rows[name]["proxy_drop"] = {k: {m: round(v, 4) for m, v in by_subset(k, name).items()} for k in subsets}
    proxies = list(rows[candidates[0]]["proxy_drop"]["calib"])
    timings["proxies_s"] = round(time.perf_counter() - t0, 1)

    # Splits: (tuning subset, measuring subset).
    splits = {"calib->eval": ("calib", "eval")}
    for seed in range(args.seeds):
        splits[f"s{seed}A->B"] = (f"s{seed}A", f"s{seed}B")
        splits[f"s{seed}B->A"] = (f"s{seed}B", f"s{seed}A")
    results: dict[str, dict] = {}
    for family_name, names in (("all", candidates), ("without_degenerate", [n for n in candidates if n != DEGENERATE])):
        res = results[family_name] = {"candidates": len(names), "splits": {}, "summary": {}}
        for split, (tune, measure) in splits.items():
            true = [rows[n]["true_drop_pt"][measure] for n in names]
            entry = {p: correlate([rows[n]["proxy_drop"][tune][p] for n in names], true) for p in proxies}
            if tune != "calib":  # reference: the true drop measured with labels on the tuning half
                entry["labelled_half"] = correlate([rows[n]["true_drop_pt"][tune] for n in names], true)
            entry["best_true_candidate"] = names[int(np.argmin(true))]
            res["splits"][split] = entry
        halves = [s for s in splits if s != "calib->eval"]
        for p in [*proxies, "labelled_half"]:
            vals = [res["splits"][s][p] for s in halves]
            summary = {"halves_mean_pearson": _mean([v["pearson"] for v in vals]), "halves_mean_spearman": _mean([v["spearman"] for v in vals]),
                       "halves_min_spearman": _min([v["spearman"] for v in vals]), "halves_mean_regret_pt": _mean([v["regret_pt"] for v in vals]),
                       "halves_max_regret_pt": _max([v["regret_pt"] for v in vals]), "halves_picked_best": f"{sum(v['picked_best'] for v in vals)}/{len(vals)}"}
            if p in res["splits"]["calib->eval"]:
                summary.update({f"calib_eval_{k}": v for k, v in res["splits"]["calib->eval"][p].items()})
            res["summary"][p] = summary

    # Tables.
    table = Table(title=f"YOLOv5n INT8 candidates, {args.size} px: true drop on the {len(eval_ids)} eval images vs label-free proxy drops on the {len(calib_ids)} calibration images")
    for col in ("candidate", "mAP50-95", "true drop pt", *proxies):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    table.add_row("FP32", f"{rows['FP32']['mAP50_95']['eval']:.4f}", "-", *["0"] * len(proxies))
    for n in candidates:
        table.add_row(n, f"{rows[n]['mAP50_95']['eval']:.4f}", f"{rows[n]['true_drop_pt']['eval']:+.2f}", *[f"{rows[n]['proxy_drop']['calib'][p]:.3f}" for p in proxies])
    console.print(table)
    for family_name, res in results.items():
        t = Table(title=f"proxy drop vs true drop over {res['candidates']} candidates ({family_name.replace('_', ' ')}); halves: {2 * args.seeds} splits of the eval images")
        for col in ("proxy", "calib->eval pearson", "spearman", "regret pt", "halves pearson", "spearman (min)", "regret pt mean (max)", "picked best"):
            t.add_column(col, justify="left" if col == "proxy" else "right")
        for p, s in res["summary"].items():
            t.add_row(p, _fmt(s.get("calib_eval_pearson")), _fmt(s.get("calib_eval_spearman")), _fmt(s.get("calib_eval_regret_pt"), 2),
                      _fmt(s["halves_mean_pearson"]), f"{_fmt(s['halves_mean_spearman'])} ({_fmt(s['halves_min_spearman'])})",
                      f"{_fmt(s['halves_mean_regret_pt'], 2)} ({_fmt(s['halves_max_regret_pt'], 2)})", s["halves_picked_best"])
        console.print(t)
    console.print("drop: true = FP32 mAP50-95 - candidate mAP50-95 (pt); pseudo_map/box_agreement = 100 (1 - value); cosines = 100 (1 - mean cosine). "
                  "regret = true drop of the proxy's pick - smallest true drop (pt). labelled_half: the true drop on the tuning half, with labels.")

    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    payload = {
        "benchmark": "proxy_correlation",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {"input_size": args.size, "threads": args.threads, "seeds": args.seeds, "eval_images": len(eval_ids), "calibration_images": len(calib_ids),
                     "few_calibration_images": FEW, "pseudo_confs": list(PSEUDO_CONFS), "postprocess": {"conf": 0.001, "iou": 0.65, "max_det": 300},
                     "placement": ORT_PLACEMENT.name, "command": " ".join(sys.argv), "cpu_count": os.cpu_count()},
        "device": device_fingerprint(),
        "timings": timings,
        "definitions": {
            "true_drop_pt": "100 x (FP32 mAP50-95 - candidate mAP50-95) against the real COCO boxes of the measuring images",
            "pseudo_map@c": "100 x (1 - mAP50-95 of the candidate against FP32's detections scoring >= c as ground truth), tuning images, no labels",
            "pseudo_map50@0.25": "as pseudo_map@0.25 with mAP50",
            "box_agreement@0.25": "100 x (1 - edgekit.tuning.proxy.box_agreement at 0.25)",
            "score_cosine": "100 x (1 - mean over images of the cosine of objectness x class score per anchor)",
            "output_cosine": "100 x (1 - mean over images of the cosine of the raw output0)",
            "labelled_half": "the true drop on the tuning half with its labels (reference, not label-free)",
            "regret_pt": "true drop of the candidate with the smallest proxy drop minus the smallest true drop",
        },
        "candidates": rows,
        "correlation": results,
    }
    write_json_atomic(args.out, payload)
    console.print(f"wrote {args.out} ({timings['total_s']} s)")


def _clean(values: list) -> list[float]:
    return [v for v in values if v is not None]


def _mean(values: list) -> float | None:
    v = _clean(values)
    return round(float(np.mean(v)), 4) if v else None


def _min(values: list) -> float | None:
    v = _clean(values)
    return round(float(np.min(v)), 4) if v else None


def _max(values: list) -> float | None:
    v = _clean(values)
    return round(float(np.max(v)), 4) if v else None


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
