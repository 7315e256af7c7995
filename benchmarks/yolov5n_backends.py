"""YOLOv5n on every edge backend, edgekit's engines and the best peer route per backend, measured in one process.

Runs the ``recipes/yolov5n_edge.yaml`` job (``edgekit.job.Job``: export, one shared calibration, one engine per target), adds the
peer pipelines (``--peers``: Ultralytics' OpenVINO INT8 and LiteRT INT8 export routes, rebuilt from the same FP32
model and the same calibration images; ``benchmarks/peers.py``), then evaluates all of them on the 158 COCO images
and times them round-robin in one loop (ratios robust to machine noise). Prints a table and writes JSON.

    python benchmarks/yolov5n_backends.py [--runs 100] [--warmup 10] [--max-images N] [--peers] [--accuracy-control] [--out FILE]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402

from edgekit.artifacts import write_json_atomic  # noqa: E402
from edgekit.backends import Built  # noqa: E402
from edgekit.job import Job, reference_target  # noqa: E402
from edgekit.recipe import load_recipe  # noqa: E402
from edgekit.targets import Target  # noqa: E402

RECIPE = HERE.parent / "recipes" / "yolov5n_edge.yaml"

# label -> (the target it competes as, its build): a peer is measured like a target under its own label
Peers = dict[str, tuple[Target, Built]]


def peer_openvino(job: Job, work: Path) -> Peers:
    """Ultralytics' OpenVINO INT8 route on the run's FP32 model and calibration images (built before any LiteRT
    build: litert-torch's JAX threads make NNCF's later forks unsafe)."""
    from edgekit.backends.openvino.runner import OpenVinoRunner

    d, threads = job.family.detector, job.recipe.benchmark.threads
    start = time.perf_counter()
    ov_xml = peers.openvino_ultralytics(job.graphs["model"].fp32, work / "peer_openvino_int8.xml", job.family.calib_images, lambda p: d.preprocess(p)[0], d.head_prefix())
    job.timings["peer openvino build"] = round(time.perf_counter() - start, 2)
    built = Built(ov_xml, "int8", lambda: OpenVinoRunner(ov_xml, threads=threads, precision_hint=None), files=[ov_xml],
                  notes=["nncf.quantize MIXED, every Sigmoid and the whole Detect head ignored; device-default precision (no hint, as Ultralytics)"])
    return {"peer ultralytics openvino:int8": (Target(backend="openvino", precision="int8"), built)}


def peer_litert(job: Job, work: Path) -> Peers:
    """Ultralytics' LiteRT INT8 route (as written, and with the boxes normalized inside YOLOv5's decode)."""
    from edgekit.backends.litert.runner import LiteRTRunner

    d, threads, size = job.family.detector, job.recipe.benchmark.threads, job.recipe.model.input_size
    out: Peers = {}
    for in_head, label in [(False, "peer ultralytics tflite:int8"), (True, "peer ultralytics tflite:int8, boxes normalized in the decode")]:
        start = time.perf_counter()
        tfl = peers.litert_ultralytics(job.family.fused, work / f"peer_litert_int8{'_in_head' if in_head else ''}.tflite", job.family.calib_images,
                                       lambda p: d.preprocess(p)[0], size, in_head)
        job.timings[f"{label} build"] = round(time.perf_counter() - start, 2)

        def runner(path=tfl):
            return peers.NormalizedBoxesRunner(LiteRTRunner(path, threads=threads, input_names=[d.input_name], output_names=["output0"]), size)

        out[label] = (Target(backend="tflite", precision="int8"),
                      Built(tfl, "int8", runner, files=[tfl], notes=["boxes / input size, static_wi8_ai8 on the whole graph (decode included), float I/O"]))
    return out


def measure(job: Job, builds: dict[Target, dict[str, Built]], peer: Peers):
    """``Job.measure`` over the recipe's targets and the peers together: evaluate each (the reference first), then
    time them all round-robin in one loop. Returns the variants (peers named by their label) and the reference."""
    from edgekit import progress
    from edgekit.job import LATENCY_KEYS
    from edgekit.profiling.latency import measure_latency_interleaved
    from edgekit.profiling.memory import PeakMemory
    from edgekit.reports.schema import LatencyMs

    entries = {t.name: (t, b) for t, b in builds.items()} | {label: (t, {"model": b}) for label, (t, b) in peer.items()}
    ref = reference_target(job.recipe.targets, builds)
    job.reference_name = ref.name
    variants = {}
    for label, (target, built) in entries.items():
        variants[label] = job.variant(target, built)
        variants[label].name = label
    runners: dict[str, dict] = {}
    reference = None
    try:
        for label in [ref.name] + [n for n in entries if n != ref.name]:
            v, (target, built) = variants[label], entries[label]
            if v.status != "measured":
                continue
            with PeakMemory() as memory:
                runners[label] = {g: b.make_runner() for g, b in built.items()}
                for r in runners[label].values():
                    r.load()
                with job.timer(f"evaluate {label}"):
                    result = job.family.evaluate(target, runners[label], reference)
            v.peak_memory_mb = round(memory.peak_mb, 1)
            v.metrics, v.fidelity, v.per_class_ap = result.metrics, result.fidelity, result.per_class_ap
            v.notes += result.notes
            reference = reference or result
        feed, b = job.family.latency_feeds()["model"], job.recipe.model.batch
        feed = {k: np.concatenate([x] * b) for k, x in feed.items()} if b > 1 else feed
        with job.timer("latency"):
            stats = measure_latency_interleaved({n: (rs["model"], feed) for n, rs in runners.items()}, job.recipe.benchmark.warmup, job.recipe.benchmark.runs, b,
                                                progress.enabled())
        for label, s in stats.items():
            variants[label].latency_ms = LatencyMs(**{k: round(getattr(s, k), 3) for k in LATENCY_KEYS})
            variants[label].throughput_per_s = round(s.throughput_per_s, 2)
    finally:
        for graph_runners in runners.values():
            for r in graph_runners.values():
                r.close()
    return list(variants.values()), ref, entries


def head_to_head(job: Job, entries: dict[str, tuple[Target, dict[str, Built]]], runs: int, warmup: int, repeats: int = 3) -> dict[str, list[dict]]:
    """Per backend, edgekit's INT8 engine against that backend's peer engines only, interleaved in their own loop
    (``repeats`` times): the cleanest ratio, free of the cross-talk of a dozen runtimes loaded side by side."""
    from edgekit.profiling.latency import measure_latency_interleaved

    feed = job.family.detector.preprocess(job.family.calib_images[0])[0]
    out: dict[str, list[dict]] = {}
    for backend in ("openvino", "tflite"):
        ours = f"{backend}:int8"
        rivals = [label for label, (t, _) in entries.items() if label.startswith("peer") and t.backend == backend]
        if ours not in entries or not entries[ours][1]["model"].built or not rivals:
            continue
        runners = {label: entries[label][1]["model"].make_runner() for label in [ours, *rivals]}
        try:
            for r in runners.values():
                r.load()
            for _ in range(repeats):
                stats = measure_latency_interleaved({n: (r, feed) for n, r in runners.items()}, warmup, runs)
                medians = {n: round(s.median, 3) for n, s in stats.items()}
                out.setdefault(backend, []).append({"median_ms": medians, "edgekit_vs_peer": {n: round(medians[ours] / m, 3) for n, m in medians.items() if n != ours}})
        finally:
            for r in runners.values():
                r.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-images", type=int, default=None, help="evaluate on the first N images only (quick run)")
    parser.add_argument("--peers", action="store_true", help="also build and measure the peer routes (Ultralytics OpenVINO/LiteRT INT8)")
    parser.add_argument("--accuracy-control", action="store_true", help="also build openvino:int8 with NNCF accuracy control (slow)")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "backends", help="where models are written (git-ignored)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "yolov5n_backends.json")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    recipe.benchmark.runs, recipe.benchmark.warmup = args.runs, args.warmup
    if args.max_images:
        recipe.evaluation.max_images = args.max_images
    if args.accuracy_control:
        recipe.targets = [*recipe.targets, Target(backend="openvino", precision="int8", accuracy_control=True)]
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    job = Job(recipe, args.recipe, args.work)
    start = time.perf_counter()
    job.record_input(args.recipe)
    job.prepare_graphs()  # Job.execute's stages up to the builds
    peer: Peers = peer_openvino(job, args.work) if args.peers else {}
    builds = job.build()
    if args.peers:
        peer |= peer_litert(job, args.work)
    variants, ref_target, entries = measure(job, builds, peer)
    duels = head_to_head(job, entries, args.runs, args.warmup) if args.peers else {}
    job.timings["total"] = round(time.perf_counter() - start, 2)
    report = job.report(variants, ref_target)

    ref = report.variant(report.reference)
    rows = []
    for v in report.variants:
        lat = v.latency_ms.median if v.latency_ms else None
        backend = v.manifest.get("settings", {}).get("backend") or {}
        rows.append({
            "target": v.name,
            "status": v.status,
            "mAP50-95": v.metrics.get("mAP50-95"),
            "mAP50": v.metrics.get("mAP50"),
            "drop_pt": round((ref.metrics["mAP50-95"] - v.metrics["mAP50-95"]) * 100, 2) if v.metrics and v is not ref else None,
            "median_ms": lat,
            "p90_ms": v.latency_ms.p90 if v.latency_ms else None,
            "latency_vs_ort_fp32": round(lat / ref.latency_ms.median, 3) if lat else None,
            "size_mb": round(v.size_bytes / 1e6, 2),
            "compiled": backend.get("compiled"),
            "interpreter": backend.get("interpreter"),
            "notes": v.notes,
            "not_built_reason": v.not_built_reason,
        })
    table = Table(title=f"YOLOv5n, {report.device.get('cpu_model')}, {recipe.benchmark.threads} threads, {args.runs} round-robin runs")
    for col in ["target", "mAP50-95", "drop pt", "mAP50", "median ms", "vs ORT fp32", "MB"]:
        table.add_column(col)
    for r in rows:
        if r["status"] != "measured":
            table.add_row(r["target"], "not built", "", "", "", "", f"{r['size_mb']:.2f}")
            continue
        table.add_row(
            r["target"], f"{r['mAP50-95']:.4f}", f"{-r['drop_pt']:+.2f}" if r["drop_pt"] is not None else "ref", f"{r['mAP50']:.4f}",
            f"{r['median_ms']:.2f}", f"{r['latency_vs_ort_fp32']:.2f}x", f"{r['size_mb']:.2f}",
        )
    console = Console(width=140)
    console.print(table)
    for backend, rounds in duels.items():
        for i, rnd in enumerate(rounds, 1):
            console.print(f"{backend} head-to-head, round {i}: " + ", ".join(f"{n} {m:.2f} ms" for n, m in rnd["median_ms"].items())
                          + " | edgekit/peer: " + ", ".join(f"{r:.3f}" for r in rnd["edgekit_vs_peer"].values()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {"recipe": str(args.recipe), "runs": args.runs, "device": report.device, "versions": ref.manifest.get("versions"), "timings_s": report.timings_s, "rows": rows, "head_to_head": duels})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
