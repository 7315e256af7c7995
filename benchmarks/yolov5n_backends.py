"""YOLOv5n on every edge backend from one recipe: accuracy, latency ratio to ORT FP32, size; one run, one table.

Runs ``recipes/yolov5n_edge.yaml`` through the same pipeline as ``edgekit export`` (so the numbers are the
report's), with latency timed round-robin across all targets in one loop. Prints a table and writes JSON.

    python benchmarks/yolov5n_backends.py [--runs 100] [--warmup 10] [--max-images N] [--accuracy-control] [--out FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgekit.artifacts import write_json_atomic
from edgekit.pipeline import run_recipe
from edgekit.recipe import TargetSpec, load_recipe

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "yolov5n_edge.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-images", type=int, default=None, help="evaluate on the first N images only (quick run)")
    parser.add_argument("--accuracy-control", action="store_true", help="also build openvino:int8 with NNCF accuracy control (slow)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "yolov5n_backends.json")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    recipe.benchmark.runs, recipe.benchmark.warmup = args.runs, args.warmup
    if args.max_images:
        recipe.evaluation.max_images = args.max_images
    if args.accuracy_control:
        recipe.targets = [*recipe.targets, TargetSpec(backend="openvino", precision="int8", accuracy_control=True)]
    with tempfile.TemporaryDirectory() as tmp:
        report = run_recipe(recipe, args.recipe, Path(tmp) / "run")

    ref = report.variant(report.reference)
    rows = []
    for v in report.variants:
        lat = v.latency_ms.median if v.latency_ms else None
        rows.append({
            "target": v.name,
            "status": v.status,
            "mAP50-95": v.metrics.get("mAP50-95"),
            "mAP50": v.metrics.get("mAP50"),
            "drop_pt": round((ref.metrics["mAP50-95"] - v.metrics["mAP50-95"]) * 100, 2) if v.metrics and v is not ref else None,
            "median_ms": lat,
            "latency_vs_ort_fp32": round(lat / ref.latency_ms.median, 3) if lat else None,
            "size_mb": round(v.size_bytes / 1e6, 2),
            "io_dtypes": (v.manifest.get("settings", {}).get("backend") or {}).get("interpreter", {}).get("io_dtypes"),
            "compiled": (v.manifest.get("settings", {}).get("backend") or {}).get("compiled"),
            "not_built_reason": v.not_built_reason,
        })
    table = Table(title=f"YOLOv5n, {len(report.variants)} targets, {args.runs} round-robin runs, {report.device.get('cpu_model')}")
    for col in ["target", "mAP50-95", "drop pt", "mAP50", "median ms", "vs ORT fp32", "MB"]:
        table.add_column(col)
    for r in rows:
        if r["status"] != "measured":
            table.add_row(r["target"], "not built", "", "", "", "", f"{r['size_mb']:.2f}")
            continue
        table.add_row(
            r["target"], f"{r['mAP50-95']:.4f}", f"{r['drop_pt']:+.2f}" if r["drop_pt"] is not None else "ref", f"{r['mAP50']:.4f}",
            f"{r['median_ms']:.2f}", f"{r['latency_vs_ort_fp32']:.2f}x", f"{r['size_mb']:.2f}",
        )
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {"recipe": str(args.recipe), "runs": args.runs, "device": report.device, "timings_s": report.timings_s, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
