"""YOLOv5n on every edge backend, edgekit's engines and the best peer route per backend, measured in one process.

Runs the ``recipes/yolov5n_edge.yaml`` pipeline (export, one shared calibration, one engine per target), adds the
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

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402
from edgekit.artifacts import write_json_atomic  # noqa: E402
from edgekit.backends import BuiltTarget  # noqa: E402
from edgekit.pipeline import BuildContext, build_report, build_stage, export_stage, measure_targets, quantize_stage  # noqa: E402
from edgekit.recipe import TargetSpec, load_recipe  # noqa: E402

RECIPE = HERE.parent / "recipes" / "yolov5n_edge.yaml"


def peer_builds(ctx: BuildContext, work: Path) -> list[BuiltTarget]:
    """Ultralytics' OpenVINO and LiteRT INT8 routes on the run's FP32 model and calibration images."""
    from edgekit.backends.litert.runner import LiteRTRunner
    from edgekit.backends.openvino.runner import OpenVinoRunner

    prep = lambda p: ctx.family.preprocess(p)[0]  # noqa: E731
    threads, size = ctx.recipe.benchmark.threads, ctx.recipe.model.input_size
    out = []
    start = time.perf_counter()
    ov_xml = peers.openvino_ultralytics(ctx.artifacts["fp32"], work / "peer_openvino_int8.xml", ctx.calibration, prep, ctx.family.head_prefix())
    ctx.timings["peer openvino build"] = round(time.perf_counter() - start, 2)
    out.append(BuiltTarget(TargetSpec(backend="openvino", precision="int8"), ov_xml, lambda: OpenVinoRunner(ov_xml, threads=threads, precision_hint=None),
                           files=[ov_xml], label="peer ultralytics openvino:int8", notes=["nncf.quantize MIXED, every Sigmoid and the whole Detect head ignored; device-default precision (no hint, as Ultralytics)"]))
    for in_head, label in [(False, "peer ultralytics tflite:int8"), (True, "peer ultralytics tflite:int8, boxes normalized in the decode")]:
        start = time.perf_counter()
        tfl = peers.litert_ultralytics(ctx.torch_model, work / f"peer_litert_int8{'_in_head' if in_head else ''}.tflite", ctx.calibration, prep, size, in_head)
        ctx.timings[f"{label} build"] = round(time.perf_counter() - start, 2)

        def runner(path=tfl):
            return peers.NormalizedBoxesRunner(LiteRTRunner(path, threads=threads, input_names=[ctx.family.input_name], output_names=["output0"]), size)

        out.append(BuiltTarget(TargetSpec(backend="tflite", precision="int8"), tfl, runner, files=[tfl], label=label,
                               notes=["boxes / input size, static_wi8_ai8 on the whole graph (decode included), float I/O"]))
    return out


def head_to_head(ctx: BuildContext, runs: int, warmup: int, repeats: int = 3) -> dict[str, list[dict]]:
    """Per backend, edgekit's INT8 engine against that backend's peer engines only, interleaved in their own loop
    (``repeats`` times): the cleanest ratio, free of the cross-talk of a dozen runtimes loaded side by side."""
    from edgekit.profiling.latency import measure_latency_interleaved

    feed = ctx.family.preprocess(ctx.calibration[0])[0]
    out: dict[str, list[dict]] = {}
    for backend in ("openvino", "tflite"):
        ours = ctx.builds.get(f"{backend}:int8")
        rivals = [b for name, b in ctx.builds.items() if name.startswith("peer") and b.target.backend == backend]
        if ours is None or not rivals:
            continue
        runners = {b.name: b.make_runner() for b in [ours, *rivals]}
        try:
            for r in runners.values():
                r.load()
            for _ in range(repeats):
                stats = measure_latency_interleaved({n: (r, feed) for n, r in runners.items()}, warmup, runs)
                medians = {n: round(s.median, 3) for n, s in stats.items()}
                out.setdefault(backend, []).append({"median_ms": medians, "edgekit_vs_peer": {n: round(medians[ours.name] / m, 3) for n, m in medians.items() if n != ours.name}})
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
        recipe.targets = [*recipe.targets, TargetSpec(backend="openvino", precision="int8", accuracy_control=True)]
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    ctx = BuildContext(recipe, args.recipe, args.work)
    start = time.perf_counter()
    export_stage(ctx)
    quantize_stage(ctx)
    build_stage(ctx)
    if args.peers:
        for built in peer_builds(ctx, args.work):
            ctx.builds[built.name] = built
    variants = measure_targets(ctx)
    duels = head_to_head(ctx, args.runs, args.warmup) if args.peers else {}
    ctx.timings["total"] = round(time.perf_counter() - start, 2)
    report = build_report(ctx, variants)

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
