"""PTQ against label-free QAT on ONNX Runtime, through edgekit's job (``edgekit export`` of ``recipes/yolov5n.yaml``).

Two runs of the recipe with targets ``onnxruntime:fp32`` (reference), ``onnxruntime:int8``, ``openvino:int8``,
``tensorrt:int8`` (TensorRT's placement from the trained weights and scales, accuracy simulated on the CPU) and
``tflite:int8`` (LiteRT's conversion of the module with the trained weights, the trained ranges matched onto it), the same ranges
(``method: percentile`` 99.99, no search, so that only QAT differs), one with ``quantization.mode: ptq`` and one with
``mode: qat`` (``quantization.qat`` from the recipe, or ``--steps`` / ``--lr`` / ``--qat-images``). QAT trains on the
calibration folder plus ``--qat-images`` (default the first 400 ImageNet sample images); the evaluation images are only
measured. In the PTQ run OpenVINO's int8 is NNCF's (``openvino.int8_from: auto``); in the QAT run OpenVINO imports the
trained Q/DQ graph. Per row: mAP50-95 drop vs FP32 with its paired bootstrap 95% interval, latency ratio vs ORT FP32 in the
same run, QAT training seconds and peak memory (RSS of the process).

    python benchmarks/qat.py [--steps 300] [--lr 1e-5] [--qat-images DIR --qat-count 400] [--max-images N] [--out FILE]
                             [--modes ptq,qat] [--tflite-qat-ranges trained|litert]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edgekit.artifacts import write_json_atomic  # noqa: E402
from edgekit.assets import assets_dir  # noqa: E402
from edgekit.job import run_recipe  # noqa: E402
from edgekit.recipe import Recipe, load_recipe  # noqa: E402
from edgekit.reports.schema import Report  # noqa: E402
from edgekit.targets import Target  # noqa: E402

RECIPE = HERE.parent / "recipes" / "yolov5n.yaml"
TARGETS = ["onnxruntime:fp32", "onnxruntime:int8", "openvino:int8", "tensorrt:int8", "tflite:int8"]  # TensorRT: accuracy simulated, not timed


def variant_recipe(base: Recipe, mode: str, args: argparse.Namespace) -> Recipe:
    recipe = base.model_copy(deep=True)
    recipe.targets = [Target.parse(t) for t in TARGETS]
    q = recipe.quantization
    q.method, q.percentile, q.search, q.bias_correction, q.mode = "percentile", 99.99, None, False, mode
    q.qat.steps, q.qat.lr = args.steps, args.lr
    q.qat.images = [q.calibration.images, str(args.qat_images)] if args.qat_images else None
    q.qat.count = args.qat_count
    recipe.tflite.qat_ranges = args.tflite_qat_ranges
    return recipe


def rows_of(report: Report, mode: str) -> list[dict[str, Any]]:
    ref = report.variant(report.reference)
    qat = ((report.tuning or {}).get("graphs", {}).get("model", {}) or {}).get("qat")
    out = []
    for v in report.variants:
        if v is ref or v.status not in ("measured", "simulated"):
            continue
        timed = v.latency_ms is not None and ref.latency_ms is not None
        verdict = next(b for b in v.budget if b.metric == "mAP50-95")
        out.append({
            "mode": mode, "target": v.name, "int8_from": (v.manifest.get("settings", {}).get("backend") or {}).get("int8_from"),
            "mAP50-95": v.metrics.get("mAP50-95"), "fp32_mAP50-95": ref.metrics.get("mAP50-95"),
            "drop_pt": round(100 * verdict.drop, 2), "drop_ci95_pt": [round(100 * x, 2) for x in verdict.interval] if verdict.interval else None,
            "status": v.status, "passed": verdict.passed, "latency_ms": v.latency_ms.median if timed else None, "fp32_latency_ms": ref.latency_ms.median,
            "ratio_vs_fp32": round(v.latency_ms.median / ref.latency_ms.median, 3) if timed else None,
            "qat_seconds": qat["seconds"] if qat else None, "qat_peak_rss_mb": qat["peak_rss_mb"] if qat else None,
            "qat_images": qat["images"] if qat else None, "qat_resumed_from_step": qat["resumed_from_step"] if qat else None, "qat_loss_first_last": [qat["loss_first_10"], qat["loss_last_10"]] if qat else None,
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--qat-images", type=Path, default=assets_dir() / "imagenet_sample_1000" / "images")
    parser.add_argument("--qat-count", type=int, default=400, help="images taken from each QAT folder")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--modes", default="ptq,qat", help="which runs, comma-separated")
    parser.add_argument("--tflite-qat-ranges", choices=["trained", "litert"], default="trained", help="tflite.qat_ranges of the QAT run")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "qat")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "qat.json")
    args = parser.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    os.environ["EDGEKIT_CACHE"] = str(args.work / "cache")  # cold: QAT trains from step 0, not from an earlier run's checkpoint
    base = load_recipe(args.recipe)
    if args.max_images:
        base.evaluation.max_images = args.max_images
    rows, runs = [], {}
    for mode in args.modes.split(","):
        report = run_recipe(variant_recipe(base, mode, args), args.recipe, args.work / mode, overwrite=True)
        rows += rows_of(report, mode)
        runs[mode] = {"timings_s": report.timings_s, "tuning": report.tuning, "device": report.device}
    device = next(iter(runs.values()))["device"]
    table = Table(title=f"YOLOv5n int8, PTQ vs label-free QAT; {device.get('cpu_model')}, {base.benchmark.threads} threads; "
                        "drop vs FP32 on the evaluation images with paired bootstrap 95% interval")
    for col in ("mode", "target", "mAP50-95", "drop pt [95%]", "budget", "latency vs fp32", "QAT s", "peak RSS MB"):
        table.add_column(col)
    for r in rows:
        ci = f" [{r['drop_ci95_pt'][0]:+.2f}, {r['drop_ci95_pt'][1]:+.2f}]" if r["drop_ci95_pt"] else ""
        table.add_row(r["mode"], r["target"], f"{r['mAP50-95']:.4f}", f"{r['drop_pt']:+.2f}{ci}", "pass" if r["passed"] else "FAIL", f"{r['ratio_vs_fp32']:.2f}x" if r["ratio_vs_fp32"] else "simulated",
                      f"{r['qat_seconds']:.0f}" if r["qat_seconds"] else "-", str(r["qat_peak_rss_mb"] or "-"))
    Console(width=180).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {"benchmark": "qat", "recipe": str(args.recipe), "targets": TARGETS, "device": device, "rows": rows, "runs": runs,
                                 "command": "benchmarks/qat.py " + " ".join(sys.argv[1:])})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
