"""YOLOv5n INT8 accuracy per activation-range method: percentile 99.99 / 99.9, minmax, entropy, mse, one job each.

Ranges come from the 109 calibration images only (``coco_val2017_subset/calib_images``); the 158 annotated
evaluation images only measure. For every method the ``recipes/yolov5n.yaml`` job (export once, then per method: one
calibration pass, the ONNX Runtime Q/DQ model and the LiteRT int8 model fed the same shared ranges) is built and
evaluated on COCO; LiteRT takes the shared ranges (``tflite.ranges: shared``, the recipe default ``litert`` ignores the
method) and is also built once with its own ai-edge-quantizer MinMax ranges (``--no-litert-baseline`` skips it). FP32
(ONNX Runtime) is evaluated once as the reference, and ``--openvino`` adds ``openvino:int8`` once (NNCF computes its
own ranges: the method does not reach it). Calibration wall time is measured per method with
an empty cache. Prints a table and writes JSON. No latency: accuracy and calibration time only.

    python benchmarks/range_selection.py [--methods percentile:99.99,percentile:99.9,minmax,entropy,mse] [--backends onnxruntime,tflite]
                                         [--openvino] [--max-images N] [--out FILE]

About 15 to 25 minutes on 2 cores with both backends (LiteRT's own calibration and conversion are ~1 minute a method).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgekit.artifacts import write_json_atomic  # noqa: E402
from edgekit.job import Job  # noqa: E402
from edgekit.recipe import load_recipe  # noqa: E402
from edgekit.targets import Target  # noqa: E402

RECIPE = HERE.parent / "recipes" / "yolov5n.yaml"
METHODS = "percentile:99.99,percentile:99.9,minmax,entropy,mse"


def parse_method(text: str) -> tuple[str, float]:
    method, _, value = text.partition(":")
    return method, float(value) if value else 99.99


def evaluate(job: Job, builds: dict, reference) -> dict[str, dict]:
    """COCO metrics of every built target in ``builds`` (target -> graph -> Built), fidelity against ``reference``."""
    out = {}
    for target, graphs in builds.items():
        built = graphs["model"]
        if built.not_built:
            out[target.name] = {"not_built": built.not_built}
            continue
        runner = built.make_runner()
        runner.load()
        try:
            start = time.perf_counter()
            result = job.family.evaluate(target, {"model": runner}, reference)
            out[target.name] = {"metrics": result.metrics, "result": result, "evaluate_s": round(time.perf_counter() - start, 1), "notes": built.notes,
                                "calibration": (built.settings.get("quantization") or {}).get("calibration")}
        finally:
            runner.close()
    return out


def add_row(rows: list[dict], console: Console, fp32: dict, name: str, res: dict, method: str, calibrate_s: float | None) -> None:
    """One measured target as a table row, with its drop against FP32 in points."""
    res.pop("result", None)
    row = {"method": method, "backend": name.split(":")[0], "calibrate_s": calibrate_s, **res}
    if "metrics" in res:
        row["drop_pt"] = round(100 * (fp32["metrics"]["mAP50-95"] - res["metrics"]["mAP50-95"]), 2)
        row["drop50_pt"] = round(100 * (fp32["metrics"]["mAP50"] - res["metrics"]["mAP50"]), 2)
    rows.append(row)
    console.log(f"  {name} ({method}): " + (f"mAP50-95 {res['metrics']['mAP50-95']:.4f} (drop {row['drop_pt']:+.2f} pt)" if "metrics" in res
                                             else f"not built: {res['not_built']}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--methods", default=METHODS, help="comma-separated method[:percentile]")
    parser.add_argument("--backends", default="onnxruntime,tflite", help="int8 backends fed the shared ranges")
    parser.add_argument("--openvino", action="store_true", help="also openvino:int8 once (NNCF's own ranges, method-independent)")
    parser.add_argument("--no-litert-baseline", action="store_true", help="skip tflite:int8 with ai-edge-quantizer's own ranges")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate on the first N images only (quick run)")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "range_selection", help="where models are written (git-ignored)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "range_selection.json")
    args = parser.parse_args()

    console = Console(width=160)
    methods = [parse_method(m) for m in args.methods.split(",") if m]
    backends = [b for b in args.backends.split(",") if b]
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    os.environ["EDGEKIT_CACHE"] = str(args.work / "cache")  # every method calibrates (its time is measured)

    recipe = load_recipe(args.recipe)
    if args.max_images:
        recipe.evaluation.max_images = args.max_images
    fp32_target = Target.parse("onnxruntime:fp32")
    recipe.targets = [fp32_target] + [Target.parse(f"{b}:int8") for b in backends] + ([Target.parse("openvino:int8")] if args.openvino else [])
    recipe.tflite.ranges = "shared"
    job = Job(recipe, args.recipe, args.work / "stage")
    (args.work / "stage").mkdir()
    start = time.perf_counter()
    with job.timer("load"):
        job.family.load()
    for spec in job.family.graphs():
        job.prepare(job.export(spec))
    job.family.check_graphs()
    graph = job.graphs["model"]
    calib_images = len(graph.calibration.items)

    rows: list[dict] = []
    reference = None
    fp32: dict = {}
    for i, (method, percentile) in enumerate(methods):
        label = f"percentile {percentile:g}" if method == "percentile" else method
        console.log(f"[bold]{label}[/]: calibrate ({calib_images} images), build, evaluate")
        job.recipe.quantization.method, job.recipe.quantization.percentile = method, percentile
        # fp32 once (the reference); openvino once, before any LiteRT build (litert-torch's threads make NNCF's forks unsafe)
        job.recipe.targets = [t for t in recipe.targets if i == 0 or (t.backend != "openvino" and t != fp32_target)]
        q_start = time.perf_counter()
        job.family.quantize(graph)
        calibrate_s = round(time.perf_counter() - q_start, 1)
        builds = job.build()
        if i == 0:
            fp32 = evaluate(job, {fp32_target: builds.pop(fp32_target)}, None)[fp32_target.name]
            reference = fp32.pop("result")
            rows.append({"method": "fp32", "backend": "onnxruntime", **fp32})
        for name, res in evaluate(job, builds, reference).items():
            own = name.startswith("openvino")
            add_row(rows, console, fp32, name, res, "nncf (own ranges)" if own else label, None if own else calibrate_s)

    if "tflite" in backends and not args.no_litert_baseline:
        console.log("[bold]litert[/]: tflite:int8 with ai-edge-quantizer's own moving-average MinMax ranges")
        job.recipe.tflite.ranges = "litert"
        job.recipe.targets = [Target.parse("tflite:int8")]
        for name, res in evaluate(job, job.build(), reference).items():
            add_row(rows, console, fp32, name, res, "litert (own MinMax)", None)

    table = Table(title=f"YOLOv5n 640 int8 by range method: ranges from {calib_images} calibration images, "
                        f"mAP on {recipe.evaluation.max_images or 158} evaluation images")
    for col in ("method", "backend", "mAP50-95", "drop pt", "mAP50", "drop50 pt", "calibrate s"):
        table.add_column(col, justify="left" if col in ("method", "backend") else "right")
    for r in rows:
        if "metrics" not in r:
            table.add_row(r["method"], r["backend"], "not built", "", "", "", "")
            continue
        m = r["metrics"]
        table.add_row(r["method"], r["backend"], f"{m['mAP50-95']:.4f}", f"{r['drop_pt']:+.2f}" if "drop_pt" in r else "ref", f"{m['mAP50']:.4f}",
                      f"{r['drop50_pt']:+.2f}" if "drop50_pt" in r else "ref", f"{r['calibrate_s']}" if r.get("calibrate_s") is not None else "-")
    console.print(table)
    console.print("drop pt = FP32 (onnxruntime) minus int8, points; calibrate s = the quantize stage with an empty cache (calibration + Q/DQ)")
    payload = {
        "benchmark": "range_selection",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recipe": str(args.recipe),
        "settings": {"methods": args.methods, "backends": backends, "openvino": args.openvino, "calibration_images": calib_images,
                     "eval_images": recipe.evaluation.max_images or 158, "input_size": recipe.model.input_size, "command": " ".join(sys.argv)},
        "timings_s": {**job.timings, "total": round(time.perf_counter() - start, 1)},
        "rows": [{k: v for k, v in r.items()} for r in rows],
    }
    write_json_atomic(args.out, payload)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
