"""YOLOv5n: edgekit's TensorRT Q/DQ placement against NVIDIA Model Optimizer's ONNX PTQ, same model, same images.

Runs the ``recipes/yolov5n_edge.yaml`` job restricted to ``onnxruntime:fp32`` (the reference) and ``tensorrt:int8``
(export, one calibration on the recipe's 109 calibration images, the TensorRT-placed Q/DQ ONNX), then quantizes the
same FP32 ONNX with ``modelopt.onnx.quantization.quantize`` (int8) on the same preprocessed calibration images.
ModelOpt lives in its own virtual environment and is never imported here: it runs in a subprocess of
``--modelopt-python`` (this file, ``--child``), calibrating on the CPU (``calibration_eps=["cpu"]``).

TensorRT cannot run on this machine, so every Q/DQ model (edgekit's and ModelOpt's) is evaluated the way the job
reports ``tensorrt:int8`` as "simulated": ``edgekit.backends.tensorrt.simulate.simulated_runner`` (ONNX Runtime,
graph optimizations off, the Q/DQ arithmetic as written). Accuracy only: a simulation's latency means nothing, and
nothing is timed. Per model: COCO mAP50-95 / mAP50 on the evaluation images, the drop vs FP32 with its paired
bootstrap 95% interval (``Job.report`` -> ``edgekit.reports.evaluate_budgets``), Q/DQ counts and quantized nodes by op
type, ``lint_qdq_for_tensorrt``, and the time each quantizer took. The evaluation images choose nothing.

    MODELOPT_PYTHON=/work/scratch/mo_venv/bin/python \\
    python benchmarks/modelopt_compare.py [--modelopt-python PATH] [--max-images N] [--skip-fp16] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "yolov5n_edge.yaml"

# label -> the ModelOpt options of that row (``exclude``: edgekit's float scope as ``nodes_to_exclude``)
VARIANTS: dict[str, dict[str, Any]] = {
    "modelopt int8 (defaults, high_precision_dtype=fp32)": {"high_precision_dtype": "fp32", "exclude": False, "optional": False},
    "modelopt int8, edgekit's float scope excluded": {"high_precision_dtype": "fp32", "exclude": True, "optional": False},
    "modelopt int8 (all defaults, fp16 high precision)": {"high_precision_dtype": "fp16", "exclude": False, "optional": True},
}


# --- the child: runs under ModelOpt's interpreter, imports only numpy and ModelOpt -------------------------------


def child(spec_path: Path) -> None:
    """Quantize one model as ``spec_path`` (JSON) says; writes ``spec["result"]`` (JSON: seconds, versions)."""
    import inspect

    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    import modelopt
    import onnxruntime
    from modelopt.onnx.quantization import quantize

    params = inspect.signature(quantize).parameters
    kwargs = {
        "onnx_path": spec["onnx"],
        "quantize_mode": "int8",
        "calibration_data": np.load(spec["calibration"]),
        "calibration_method": spec.get("calibration_method"),  # None: ModelOpt's default
        "calibration_eps": ["cpu"],
        "nodes_to_exclude": spec.get("nodes_to_exclude") or None,
        "high_precision_dtype": spec["high_precision_dtype"],
        "output_path": spec["output"],
        "log_level": "WARNING",
    }
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise SystemExit(f"modelopt.onnx.quantization.quantize has no argument(s) {unknown}: signature {inspect.signature(quantize)}")
    # the effective int8 calibration method when none is given, read from this ModelOpt's own source
    default = re.search(r'calibration_method=calibration_method or "(\w+)"', inspect.getsource(quantize))
    start = time.perf_counter()
    quantize(**kwargs)
    seconds = time.perf_counter() - start
    result = {
        "seconds": round(seconds, 2),
        "modelopt_version": modelopt.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "calibration_method": spec.get("calibration_method") or (default.group(1) if default else "unknown (ModelOpt's default)"),
        "calibration_method_is_default": spec.get("calibration_method") is None,
        "calibration_images": int(kwargs["calibration_data"].shape[0]),
        "arguments": {k: v for k, v in kwargs.items() if k != "calibration_data"},
    }
    Path(spec["result"]).write_text(json.dumps(result, indent=2), encoding="utf-8")


# --- the parent: the edgekit job, ModelOpt subprocesses, evaluation ---------------------------------------------


def fail(message: str) -> None:
    print(f"modelopt_compare: {message}", file=sys.stderr)
    raise SystemExit(2)


def probe_modelopt(python: str | None) -> dict[str, str]:
    """ModelOpt's interpreter works and imports ModelOpt (else a one-line error and exit 2): its versions."""
    if not python:
        fail("no ModelOpt interpreter: pass --modelopt-python PATH or set MODELOPT_PYTHON (a python with nvidia-modelopt installed)")
    if not (Path(python).is_file() and os.access(python, os.X_OK)):
        fail(f"--modelopt-python {python!r} is not an executable file")
    code = ("import json, inspect, modelopt, onnxruntime, onnx, numpy; from modelopt.onnx.quantization import quantize; "
            "print(json.dumps({'modelopt': modelopt.__version__, 'onnxruntime': onnxruntime.__version__, 'onnx': onnx.__version__, "
            "'numpy': numpy.__version__, 'quantize_signature': str(inspect.signature(quantize))}))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        fail(f"{python} cannot import modelopt.onnx.quantization ({last})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def exclusion_regexes(fp32_path: Path, patterns: list[str]) -> tuple[list[str], list[str]]:
    """edgekit's float scope (fnmatch patterns of node names) expanded to the FP32 ONNX's node names, and those as the
    anchored regexes ModelOpt's ``nodes_to_exclude`` takes (it ``re.match``es each pattern against node names)."""
    from edgekit.onnx_io import load_onnx
    from edgekit.quantization.placement import matches

    names = [n.name for n in load_onnx(fp32_path).graph.node if matches(n.name, patterns)]
    return names, [re.escape(n) + "$" for n in names]


def run_modelopt(python: str, fp32: Path, calibration: Path, folder: Path, stem: str, options: dict[str, Any],
                 nodes_to_exclude: list[str], timeout_s: float) -> dict[str, Any]:
    """One ModelOpt quantization in a subprocess of ``python`` (output, log and result JSON in ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"{stem}_input_fp32.onnx"  # ModelOpt writes intermediate files beside its input and output
    shutil.copyfile(fp32, source)
    out, log, result = folder / f"{stem}.onnx", folder / f"{stem}.log", folder / f"{stem}.result.json"
    spec = {"onnx": str(source), "calibration": str(calibration), "output": str(out), "result": str(result),
            "high_precision_dtype": options["high_precision_dtype"], "calibration_method": None,
            "nodes_to_exclude": nodes_to_exclude if options["exclude"] else []}
    spec_path = folder / f"{stem}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        try:
            proc = subprocess.run([python, str(Path(__file__).resolve()), "--child", str(spec_path)], stdout=handle, stderr=subprocess.STDOUT,
                                  env=env, timeout=timeout_s, cwd=folder)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    wall = round(time.perf_counter() - start, 2)
    record: dict[str, Any] = {"log": str(log), "subprocess_wall_s": wall, "output": str(out)}
    if rc is None:
        record["error"] = f"timed out after {timeout_s:.0f} s"
    elif rc != 0 or not result.is_file() or not out.is_file():
        tail = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()][-3:]
        record["error"] = f"exit {rc}: " + " | ".join(tail)[:400]
    else:
        record.update(json.loads(result.read_text(encoding="utf-8")))
    return record


def qdq_stats(model) -> dict[str, Any]:
    """Q/DQ counts of a Q/DQ ONNX: Q and DQ nodes, Q->DQ pairs (activation / weight), the nodes reading a DQ by op
    type, and the compute layers whose data and weight inputs are both dequantized (what runs in int8)."""
    from edgekit.quantization.graph import GraphIndex

    index = GraphIndex(model)
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}

    def constant(name: str) -> bool:
        return index.is_constant(name)

    qs = [n for n in nodes if n.op_type == "QuantizeLinear"]
    dqs = [n for n in nodes if n.op_type == "DequantizeLinear"]
    dq_out = {n.output[0]: n for n in dqs}
    pairs = [dq for dq in dqs if dq.input[0] in producer and producer[dq.input[0]].op_type == "QuantizeLinear"]
    weight_pairs = [dq for dq in pairs if constant(producer[dq.input[0]].input[0])]
    weight_dq_only = [dq for dq in dqs if dq not in pairs and constant(dq.input[0])]  # int8 weights stored, DQ only
    readers = Counter(n.op_type for n in nodes if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_out for i in n.input))
    int8_layers = Counter(n.op_type for n in nodes if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")
                          and len(n.input) > 1 and n.input[0] in dq_out and n.input[1] in dq_out)
    activation_pairs = [dq for dq in pairs if dq not in weight_pairs]
    return {
        "quantize_linear": len(qs), "dequantize_linear": len(dqs), "qdq_pairs": len(pairs),
        "activation_qdq_pairs": len(activation_pairs), "weight_qdq_pairs": len(weight_pairs), "weight_dq_only": len(weight_dq_only),
        "quantized_activation_tensors": len({producer[dq.input[0]].input[0] for dq in activation_pairs}),
        "nodes_reading_dq_by_op": dict(readers.most_common()), "int8_compute_layers_by_op": dict(int8_layers.most_common()),
        "nodes": len(nodes), "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
    }


def graph_digest(model) -> str:
    """sha256 of the nodes (op type, inputs, outputs) and initializers: two quantizers' choices made the same graph
    exactly when their digests agree (file bytes also hold producer names and paths)."""
    import hashlib

    h = hashlib.sha256()
    for n in model.graph.node:
        h.update(f"{n.op_type}|{','.join(n.input)}|{','.join(n.output)};".encode())
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        h.update(init.name.encode() + init.raw_data)
    return h.hexdigest()


def lint_summary(model) -> dict[str, Any]:
    """``lint_qdq_for_tensorrt``: the issue count and, per rule, its count and first three issues."""
    from edgekit.backends.tensorrt.qdq import lint_qdq_for_tensorrt

    issues = lint_qdq_for_tensorrt(model)
    by_rule: dict[str, list[str]] = {}
    for issue in issues:
        by_rule.setdefault(issue.rule, []).append(str(issue))
    return {"issues": len(issues), "passed": not issues, "by_rule": {r: {"count": len(v), "first": v[:3]} for r, v in by_rule.items()}}


def smoke(runner_factory, feed) -> str | None:
    """None when the model loads and runs one image, else why not (first line of the error)."""
    runner = runner_factory()
    try:
        runner.load()
        runner.infer(feed)
    except Exception as exc:  # an unsupported kernel (fp16 on the CPU EP) surfaces here
        text = str(exc).strip() or type(exc).__name__
        if exc.__cause__ is not None:
            text += f" ({str(exc.__cause__).strip().splitlines()[0][:200]})"
        return text.splitlines()[0][:400]
    finally:
        runner.close()
    return None


def measure(job, builds, peers):
    """``Job.measure`` for the recipe's targets and the ModelOpt peers (``label -> (target, Built)``): the reference
    first, each model evaluated through its runner, or its simulation when not built. Nothing is timed (a
    simulation's latency means nothing). Per-image samples go to ``job.eval_samples`` for ``Job.report``."""
    from edgekit.job import reference_target

    entries = {t.name: (t, b) for t, b in builds.items()} | {label: (t, {"model": b}) for label, (t, b) in peers.items()}
    ref = reference_target(job.recipe.targets, builds)
    job.reference_name = ref.name
    job.eval_samples = {}
    variants, reference = {}, None
    for label in [ref.name] + [n for n in entries if n != ref.name]:
        target, built = entries[label]
        v = job.variant(target, built)
        v.name = label
        variants[label] = v
        if v.status == "not_built":
            continue
        result = job.evaluate_built(target, built, reference, label=label)
        v.metrics, v.fidelity, v.per_class_ap = result.metrics, result.fidelity, result.per_class_ap
        v.notes += result.notes
        job.eval_samples[label] = result.samples
        reference = reference or result
    return list(variants.values()), ref, entries


def interval_pt(verdict) -> list[float] | None:
    return [round(x * 100, 2) for x in verdict.interval] if verdict is not None and verdict.interval else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: run one ModelOpt quantization (ModelOpt's python)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--modelopt-python", default=os.environ.get("MODELOPT_PYTHON"),
                        help="python of the virtual environment with nvidia-modelopt (default: $MODELOPT_PYTHON)")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate on the first N images only (quick run)")
    parser.add_argument("--skip-fp16", action="store_true", help="skip the optional ModelOpt row with fp16 high precision")
    parser.add_argument("--modelopt-timeout", type=float, default=3600, help="seconds one ModelOpt quantization may take")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "modelopt_compare", help="where models are written (git-ignored)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "modelopt_compare.json")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    mo_versions = probe_modelopt(args.modelopt_python)
    from rich.console import Console
    from rich.table import Table

    from edgekit.artifacts import write_json_atomic
    from edgekit.backends import Built
    from edgekit.backends.tensorrt.simulate import INT8_HOW, simulated_runner
    from edgekit.job import Job
    from edgekit.onnx_io import load_onnx
    from edgekit.profiling.device import device_fingerprint
    from edgekit.recipe import load_recipe
    from edgekit.targets import Target

    console = Console(width=160)
    recipe = load_recipe(args.recipe)
    recipe.targets = [Target(backend="onnxruntime", precision="fp32"), Target(backend="tensorrt", precision="int8")]
    if args.max_images:
        recipe.evaluation.max_images = args.max_images
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    os.environ["EDGEKIT_CACHE"] = str(args.work / "cache")  # a cold calibration: edgekit's time is its real time
    device = device_fingerprint()
    console.print(f"CPU: {device.get('cpu_model')}, {device.get('logical_cores')} logical cores, ISA: {', '.join(device.get('isa_flags', [])) or 'none reported'}")
    console.print(f"ModelOpt {mo_versions['modelopt']} (onnxruntime {mo_versions['onnxruntime']}) at {args.modelopt_python}")

    job = Job(recipe, args.recipe, args.work / "job")
    job.stage.mkdir(parents=True)
    start = time.perf_counter()
    job.record_input(args.recipe)
    job.prepare_graphs()  # Job.execute's stages up to the builds
    graph = job.graphs["model"]
    builds = job.build()

    # the same FP32 model and the same calibration images (the recipe's, preprocessed by the family) for ModelOpt
    threads = recipe.benchmark.threads
    feeds, input_name = graph.calibration, job.family.detector.input_name
    with job.timer("stack calibration feeds"):
        stacked = np.concatenate([feeds[i][input_name] for i in range(len(feeds))]).astype(np.float32)
        calib_npy = job.stage / "modelopt" / "calibration_feeds.npy"
        calib_npy.parent.mkdir(parents=True)
        np.save(calib_npy, stacked)
    console.print(f"calibration: {stacked.shape[0]} images {tuple(stacked.shape)} {stacked.dtype} (recipe count {recipe.quantization.calibration.count})")
    excluded, regexes = exclusion_regexes(graph.fp32, graph.float_nodes)
    console.print(f"edgekit's float scope: {len(graph.float_nodes)} pattern(s) -> {len(excluded)} node(s) of the FP32 ONNX")

    smoke_feed = feeds[0]
    peers: dict[str, tuple[Target, Built]] = {}
    modelopt_runs: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for i, (label, options) in enumerate(VARIANTS.items(), 1):
        if options["optional"] and args.skip_fp16:
            skipped[label] = "skipped: --skip-fp16"
            console.print(f"[yellow]{label}: {skipped[label]}[/]")
            continue
        console.print(f"[bold]ModelOpt {i}/{len(VARIANTS)}[/]: {label}")
        record = run_modelopt(args.modelopt_python, graph.fp32, calib_npy, job.stage / "modelopt", f"modelopt_{i}", options, regexes, args.modelopt_timeout)
        record["options"] = {k: v for k, v in options.items() if k != "optional"}
        modelopt_runs[label] = record
        job.timings[f"modelopt {i} subprocess"] = record["subprocess_wall_s"]
        if "error" in record:
            skipped[label] = f"ModelOpt failed: {record['error']}"
            console.print(f"[red]{label}: {skipped[label]}[/]")
            continue
        path = Path(record["output"])

        def make(path=path):
            return simulated_runner(path, threads)

        why = smoke(make, smoke_feed)
        if why is not None:
            skipped[label] = f"quantized in {record['seconds']:.0f} s, but the simulated runner (ONNX Runtime CPU, optimizations off) cannot run it: {why}"
            console.print(f"[yellow]{label}: {skipped[label]}[/]")
            continue
        console.print(f"  quantized in {record['seconds']:.1f} s ({record['calibration_method']} calibration, {record['calibration_images']} images)")
        peers[label] = (Target(backend="tensorrt", precision="int8"),
                        Built(path, "int8", None, [path], {"modelopt": record}, not_built="ModelOpt's Q/DQ ONNX: no TensorRT engine built here",
                              notes=[f"modelopt.onnx.quantization.quantize int8, {record['calibration_method']} calibration, "
                                     f"high_precision_dtype={options['high_precision_dtype']}" + (f", {len(excluded)} nodes excluded" if options["exclude"] else "")],
                              simulate=make, simulated_how=INT8_HOW))

    variants, ref_target, entries = measure(job, builds, peers)
    job.timings["total"] = round(time.perf_counter() - start, 2)
    report = job.report(variants, ref_target)
    ref = report.variant(report.reference)

    edgekit_time = {"quantize (calibration + ORT placement)": job.timings.get("quantize"),
                    "build tensorrt:int8 (TensorRT placement, lint, build files)": job.timings.get("build tensorrt:int8")}
    edgekit_total = round(sum(x for x in edgekit_time.values() if x is not None), 2)
    rows = []
    for v in report.variants:
        target, built = entries[v.name]
        b = built["model"]
        model = load_onnx(b.path) if v.precision == "int8" and b.path else None
        budget = {bv.metric: bv for bv in (v.budget or [])}
        drop = {m: round((ref.metrics[m] - v.metrics[m]) * 100, 2) if v.metrics and v is not ref else None for m in ("mAP50-95", "mAP50")}
        is_mo = v.name in modelopt_runs
        rows.append({
            "model": v.name, "status": v.status, "simulated_how": v.simulated_how,
            "quantizer": "modelopt" if is_mo else "edgekit" if model is not None else None,
            "onnx": str(b.path) if b.path else None,
            "mAP50-95": v.metrics.get("mAP50-95"), "mAP50": v.metrics.get("mAP50"), "images_evaluated": v.metrics.get("images_evaluated"),
            "drop_pt": drop["mAP50-95"], "drop_pt_ci95": interval_pt(budget.get("mAP50-95")),
            "drop50_pt": drop["mAP50"], "drop50_pt_ci95": interval_pt(budget.get("mAP50")),
            "bootstrap": {m: {"resamples": bv.resamples, "seed": bv.seed, "images": bv.sample_count, "note": bv.interval_note} for m, bv in budget.items()},
            "fidelity": v.fidelity,
            "qdq": qdq_stats(model) if model is not None else None,
            "lint": lint_summary(model) if model is not None else None,
            "graph_sha256": graph_digest(model) if model is not None else None,
            "quantize_s": modelopt_runs[v.name].get("seconds") if is_mo else edgekit_total if model is not None else None,
            "modelopt": modelopt_runs.get(v.name),
            "notes": v.notes,
        })
    # edgekit's Q/DQ graph against each ModelOpt graph, paired on the same images: ModelOpt's mAP minus edgekit's
    from edgekit.evaluators.bootstrap import paired_interval

    ours = job.eval_samples.get("tensorrt:int8", {})
    edge = next(o for o in rows if o["model"] == "tensorrt:int8")
    for r in rows:
        theirs = job.eval_samples.get(r["model"], {}) if r["quantizer"] == "modelopt" else {}
        r["modelopt_minus_edgekit_pt"] = {}
        for m in ("mAP50-95", "mAP50"):
            if m in theirs and m in ours:
                iv = paired_interval(ours[m], theirs[m], "absolute")  # drop of ModelOpt from edgekit, in mAP
                r["modelopt_minus_edgekit_pt"][m] = {"value": round((r[m] - edge[m]) * 100, 2), "ci95": [round(-iv.high * 100, 2), round(-iv.low * 100, 2)]}
    for r in rows:  # say when two ModelOpt settings produced the very same graph
        r["same_graph_as"] = [o["model"] for o in rows if o is not r and r["graph_sha256"] and o["graph_sha256"] == r["graph_sha256"]]
    for label, why in skipped.items():
        rows.append({"model": label, "status": "skipped", "reason": why, "modelopt": modelopt_runs.get(label)})

    title = (f"YOLOv5n Q/DQ placement, edgekit vs ModelOpt {mo_versions['modelopt']}: accuracy of the TensorRT Q/DQ graph run on the CPU "
             f"({int(ref.metrics.get('images_evaluated', 0))} images, {device.get('cpu_model')})")
    table = Table(title=title)
    for col in ["model", "status", "mAP50-95", "drop pt [95% CI]", "mAP50", "drop50 pt [95% CI]", "Q/DQ pairs (act+w)", "int8 layers", "lint", "quantize s"]:
        table.add_column(col)

    def ci(x):
        return f" [{x[0]:+.2f}, {x[1]:+.2f}]" if x else ""

    for r in rows:
        if r["status"] == "skipped":
            table.add_row(r["model"], "skipped", "", "", "", "", "", "", "", "")
            continue
        q, lint = r["qdq"], r["lint"]
        table.add_row(
            r["model"], r["status"], f"{r['mAP50-95']:.4f}", "ref" if r["drop_pt"] is None else f"{r['drop_pt']:+.2f}{ci(r['drop_pt_ci95'])}",
            f"{r['mAP50']:.4f}", "ref" if r["drop50_pt"] is None else f"{r['drop50_pt']:+.2f}{ci(r['drop50_pt_ci95'])}",
            f"{q['qdq_pairs']} ({q['activation_qdq_pairs']}+{q['weight_qdq_pairs']})" if q else "",
            str(sum(q["int8_compute_layers_by_op"].values())) if q else "",
            ("clean" if lint["passed"] else f"{lint['issues']} issues") if lint else "",
            f"{r['quantize_s']:.1f}" if r["quantize_s"] is not None else "",
        )
    console.print(table)
    console.print("drop = FP32 - model, in mAP points (positive: the model lost accuracy); 95% CI: paired bootstrap over the evaluation images.")
    for r in rows:
        for m, d in (r.get("modelopt_minus_edgekit_pt") or {}).items():
            console.print(f"{r['model']} - edgekit, {m}: {d['value']:+.2f} pt [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] (paired, same images)")
    for r in rows:
        if r["status"] == "skipped":
            console.print(f"[yellow]{r['model']}[/]: {r['reason']}")
            continue
        if r["qdq"]:
            q = r["qdq"]
            console.print(f"[bold]{r['model']}[/]: Q {q['quantize_linear']}, DQ {q['dequantize_linear']} (weight DQ only {q['weight_dq_only']}), "
                          f"opset {q['opset']}; nodes reading a DQ: " + ", ".join(f"{k} {n}" for k, n in q["nodes_reading_dq_by_op"].items())
                          + "; int8 layers: " + ", ".join(f"{k} {n}" for k, n in q["int8_compute_layers_by_op"].items()))
            if r["same_graph_as"]:
                console.print(f"  the same graph (nodes and initializers) as: {', '.join(r['same_graph_as'])}")
            lint = r["lint"]
            if lint["passed"]:
                console.print("  lint_qdq_for_tensorrt: clean")
            for rule, g in lint["by_rule"].items():
                console.print(f"  lint [{rule}] x{g['count']}: " + " | ".join(g["first"]))
    console.print("edgekit time: " + ", ".join(f"{k} {v} s" for k, v in edgekit_time.items()) + f" (total {edgekit_total} s); "
                  + "; ".join(f"{label}: {rec.get('seconds', rec.get('error'))} s in quantize(), {rec['subprocess_wall_s']} s subprocess" for label, rec in modelopt_runs.items()))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {
        "recipe": str(args.recipe), "targets": [t.name for t in recipe.targets], "evaluation_images": int(ref.metrics.get("images_evaluated", 0)),
        "calibration": {"images": int(stacked.shape[0]), "folder": str(recipe.quantization.calibration.images), "shape": list(stacked.shape),
                        "edgekit_method": graph.ranges_settings.get("method"), "edgekit_percentile": graph.ranges_settings.get("percentile")},
        "evaluated_with": INT8_HOW, "latency": "not measured: every int8 model here is a CPU simulation of a TensorRT Q/DQ graph",
        "float_scope": {"edgekit_patterns": list(graph.float_nodes), "expanded_nodes": excluded, "modelopt_nodes_to_exclude": regexes},
        "modelopt": {"python": args.modelopt_python, **mo_versions},
        "device": report.device, "versions": ref.manifest.get("versions"), "edgekit_time_s": {**edgekit_time, "total": edgekit_total},
        "timings_s": report.timings_s, "rows": rows,
    })
    console.print(f"wrote {args.out} (wall {job.timings['total']:.0f} s)")


if __name__ == "__main__":
    main()
