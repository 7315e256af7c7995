"""PTQ today, stronger PTQ and PTQ + search on every backend, and NNCF's accuracy control on OpenVINO, through edgekit's job.

Each row is one ``edgekit export`` of ``recipes/yolov5n.yaml`` (the job users run, ``edgekit.job.run_recipe``) with one
change to its quantization section; targets ``onnxruntime:fp32`` (reference), ``onnxruntime:int8``,
``openvino:int8``, ``tflite:int8``:

* ``PTQ today``: ``method: percentile`` 99.99, no search (the setting edgekit shipped before tuning sets existed);
* ``stronger PTQ``: ``method: auto`` (range method chosen label-free on the tuning images) + ``bias_correction: auto``;
* ``PTQ + search``: the shipped recipe as it is (``method: auto`` + ``quantization.search``);
* ``NNCF accuracy control``: a run with the ``PTQ today`` settings and only ``openvino:int8`` with
  ``accuracy_control: true``: NNCF's ``quantize_with_accuracy_control`` held to each ``--nncf-max-drops`` budget
  (default the recipe's 0.5 pt) on the labelled *evaluation* images (``accuracy_control_data: evaluation``; no other
  row sees them, so its drop is optimistic);
* ``search at B`` and ``NNCF accuracy control at B`` (``--tuning-budgets-pt``): the same tuning budget ``B`` (pseudo
  mAP50-95 points lost against FP32's detections on the search's 32 tuning images) for edgekit's OpenVINO-priced
  search (``search.max_loss_pt``) and for NNCF's accuracy control validated label-free on those images
  (``accuracy_control_data: tuning``): same data, same metric, same budget, below all int8's tuning loss so that both
  must leave layers float. edgekit scores candidates in ONNX Runtime's Q/DQ form, NNCF in its own IR.

Per row and target: mAP50-95 drop vs FP32 (pt) with its paired bootstrap 95% interval (the report's verdict), latency
median and ratio vs ORT FP32 measured in the same run, and the seconds spent choosing (range tuning, bias
correction, and the search that priced the target's float groups: ONNX Runtime's, or OpenVINO's own with
``search.per_backend``, LiteRT's own (its candidates quantized by ai-edge-quantizer, scored and timed on LiteRT); for
NNCF its whole build). LiteRT keeps ai-edge-quantizer's own ranges, so its ``today`` and ``stronger`` rows differ only
by run-to-run noise. Ratios compare within a run only: the runs follow one another on a
shared machine.

    python benchmarks/budget_backends.py [--recipe recipes/yolov5n.yaml] [--rows today,stronger,search] [--nncf-max-drops 0.005,0.001|none]
        [--tuning-budgets-pt 6] [--max-images N] [--out FILE]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edgekit.artifacts import write_json_atomic  # noqa: E402
from edgekit.job import run_recipe  # noqa: E402
from edgekit.recipe import Recipe, SearchSpec, load_recipe  # noqa: E402
from edgekit.reports.schema import Report  # noqa: E402
from edgekit.targets import Target  # noqa: E402

RECIPE = HERE.parent / "recipes" / "yolov5n.yaml"
TARGETS = ["onnxruntime:fp32", "onnxruntime:int8", "openvino:int8", "tflite:int8"]
CHOICE_STAGES = ("tune ranges", "bias correction")  # plus the search that priced the target's float groups


def variant_recipe(base: Recipe, row: str, nncf_max_drop: float | None = None, tuning_pt: float | None = None) -> Recipe:
    """``base`` with the quantization change of ``row`` (a deep copy: rows never share state). ``nncf``: the ``today``
    settings with only ``openvino:int8`` + accuracy control (held to ``nncf_max_drop``) beside the FP32 reference."""
    recipe = base.model_copy(deep=True)
    recipe.targets = [Target.parse(t) for t in TARGETS]
    q = recipe.quantization
    if row in ("today", "nncf"):
        q.method, q.percentile, q.search, q.bias_correction = "percentile", 99.99, None, False
        if row == "nncf":
            recipe.targets = [Target.parse("onnxruntime:fp32"), Target(backend="openvino", precision="int8", accuracy_control=True)]
            recipe.budgets["mAP50-95"].max_drop = nncf_max_drop
            recipe.openvino.accuracy_control_data = "evaluation"
    elif row == "nncf_tuning":  # label-free NNCF accuracy control at the tuning budget of the search_budget row
        q.method, q.percentile, q.bias_correction = "percentile", 99.99, False
        q.search = SearchSpec(max_loss_pt=tuning_pt, enabled=False)
        recipe.targets = [Target.parse("onnxruntime:fp32"), Target(backend="openvino", precision="int8", accuracy_control=True)]
        recipe.openvino.accuracy_control_data, recipe.openvino.accuracy_control_max_loss_pt = "tuning", tuning_pt
    elif row == "search_budget":  # edgekit's OpenVINO-priced search held to an explicit tuning budget
        q.method, q.percentile, q.bias_correction = "percentile", 99.99, False
        q.search = SearchSpec(max_loss_pt=tuning_pt)
        recipe.targets = [Target.parse("onnxruntime:fp32"), Target.parse("onnxruntime:int8"), Target.parse("openvino:int8")]
    elif row == "stronger":
        q.method, q.search, q.bias_correction = "auto", None, "auto"
    elif row == "search":
        q.method = "auto"
        q.search = q.search or SearchSpec()
    else:
        raise SystemExit(f"unknown row {row!r}: use today, stronger, search, nncf, search_budget, nncf_tuning")
    return recipe


def rows_of(report: Report, row: str, max_drop: float | None = None, tuning_pt: float | None = None) -> list[dict[str, Any]]:
    """One table row per measured quantized variant of ``report``."""
    ref = report.variant(report.reference)
    tuning = (report.tuning or {}).get("graphs", {}).get("model", {})
    ranges_s = round(sum(v for k, v in report.timings_s.items() if k in CHOICE_STAGES[:2]), 1)
    out = []
    for v in report.variants:
        if v is ref:
            continue
        search = (tuning.get("backend_searches") or {}).get(v.backend) or (tuning.get("search") if v.backend != "tflite" else None)
        verdict = next((b for b in v.budget if b.metric == "mAP50-95"), None)
        nncf = v.name.endswith("+ac")
        lat = v.latency_ms.median if v.latency_ms else None
        out.append({
            "row": (f"NNCF accuracy control, tuning {tuning_pt:g} pt" if tuning_pt is not None else f"NNCF accuracy control ({100 * max_drop:g} pt)")
                   if nncf else f"search, tuning {tuning_pt:g} pt" if tuning_pt is not None else row,
            "target": v.name, "status": v.status, "max_drop": max_drop, "tuning_budget_pt": tuning_pt,
            "tuning_loss_pt": None if nncf or not search else search.get("loss_pt"),
            "mAP50-95": v.metrics.get("mAP50-95"), "drop_pt": round(100 * verdict.drop, 2) if verdict and verdict.drop is not None else None,
            "drop_ci95_pt": [round(100 * x, 2) for x in verdict.interval] if verdict and verdict.interval else None,
            "passed": verdict.passed if verdict else None,
            "latency_ms": lat, "fp32_latency_ms": ref.latency_ms.median if ref.latency_ms else None,
            "ratio_vs_fp32": round(lat / ref.latency_ms.median, 3) if lat and ref.latency_ms else None,
            "choose_s": report.timings_s.get(f"build {v.name}") if nncf else round(ranges_s + (search or {}).get("seconds", 0.0), 1),
            "search_s": None if nncf or not search else search["seconds"],
            "search_priced_by": None if nncf or not search else search.get("backend", "onnxruntime"),
            "ranges": "nncf" if nncf else "litert minmax" if v.backend == "tflite" else
                      (tuning.get("ranges") or {}).get("chosen") or v.manifest.get("settings", {}).get("quantization", {}).get("method"),
            "float_groups": None if nncf or not search else search.get("float_groups"),
            "not_built_reason": v.not_built_reason,
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--rows", default="today,stronger,search", help="comma-separated: today, stronger, search")
    parser.add_argument("--nncf-max-drops", default="", help="comma-separated mAP50-95 budgets (fractions) for NNCF accuracy control runs "
                        "(default: the recipe's; 'none' skips NNCF)")
    parser.add_argument("--tuning-budgets-pt", default="", help="comma-separated tuning budgets (pseudo-mAP points) for the paired "
                        "'search at B' and label-free 'NNCF accuracy control at B' rows (e.g. 6)")
    parser.add_argument("--tuning-rows", default="search_budget,nncf_tuning", help="which rows run at each tuning budget")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate on the first N images only (quick run; NNCF sees the same N)")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "budget_backends", help="run folders (git-ignored)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "budget_backends.json")
    args = parser.parse_args()

    base = load_recipe(args.recipe)
    if args.max_images:
        base.evaluation.max_images = args.max_images
    shutil.rmtree(args.work, ignore_errors=True)
    rows, runs = [], {}
    drops = [] if args.nncf_max_drops == "none" else [float(x) for x in args.nncf_max_drops.split(",") if x] or [base.budgets["mAP50-95"].max_drop]
    budgets = [float(x) for x in args.tuning_budgets_pt.split(",") if x]
    plan = ([(row, None, None) for row in args.rows.split(",") if row] + [("nncf", d, None) for d in drops] +
            [(row, None, b) for b in budgets for row in args.tuning_rows.split(",") if row])
    for row, drop, tuning_pt in plan:
        name = row if drop is None else f"nncf_{drop:g}"
        name = name if tuning_pt is None else f"{row}_{tuning_pt:g}"
        recipe = variant_recipe(base, row, drop, tuning_pt)
        report = run_recipe(recipe, args.recipe, args.work / name, overwrite=True)
        rows += rows_of(report, row, drop, tuning_pt)
        runs[name] = {"timings_s": report.timings_s, "tuning": report.tuning, "device": report.device}
    device = next(iter(runs.values()))["device"]
    table = Table(title=f"YOLOv5n int8 per backend, {device.get('cpu_model')} ({', '.join(f for f in device.get('isa_flags', []) if 'vnni' in f or 'amx' in f or 'bf16' in f)}), "
                        f"{base.benchmark.threads} threads; drop vs ORT FP32 on the evaluation images with paired bootstrap 95% interval")
    for col in ("row", "target", "ranges", "float groups", "drop pt [95%]", "budget", "latency vs fp32", "choosing s"):
        table.add_column(col)
    for r in rows:
        if r["status"] != "measured":
            table.add_row(r["row"], r["target"], "", "", f"not built: {r['not_built_reason']}", "", "", "")
            continue
        ci = f" [{r['drop_ci95_pt'][0]:+.2f}, {r['drop_ci95_pt'][1]:+.2f}]" if r["drop_ci95_pt"] else ""
        groups = r["float_groups"]
        table.add_row(r["row"], r["target"], str(r["ranges"] or ""), (f"{len(groups)}: {', '.join(groups[:3])}" + (", ..." if len(groups) > 3 else "")) if groups else "-", f"{r['drop_pt']:+.2f}{ci}",
                      "pass" if r["passed"] else "FAIL", f"{r['ratio_vs_fp32']:.2f}x", f"{r['choose_s']:.0f}" if r["choose_s"] is not None else "")
    Console(width=180).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {"benchmark": "budget_backends", "recipe": str(args.recipe), "targets": TARGETS, "nncf_max_drops": drops,
                                 "tuning_budgets_pt": budgets, "max_images": args.max_images, "device": device, "rows": rows, "runs": runs,
                                 "command": "benchmarks/budget_backends.py " + " ".join(sys.argv[1:])})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
