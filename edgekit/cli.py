"""The ``edgekit`` command line: export, eval, bench, inspect, build, embed-labels, generate, check, compare, sensitivity."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgekit.console import console as err_console  # the one stderr console (edgekit.console)
from edgekit.errors import EdgekitError

app = typer.Typer(help="edgekit: export, fuse, quantize, evaluate, profile and gate models for edge targets.\n\n"
                  "Exit codes: 0 success (every budget holds), 1 a budget does not hold, 2 bad input (one line naming "
                  "the file and the fix), 130/143 interrupted.", no_args_is_help=True)
console = Console()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"edgekit {version('edgekit')}")
        raise typer.Exit()


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="also show third-party output (TensorFlow/LiteRT, absl, torch, NNCF banners and warnings)")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no stage lines or progress bars: only the result and errors")] = False,
    _show_version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")] = False,
) -> None:
    """Global options: they go before the command, e.g. `edgekit --quiet check runs/yolov5n/report.json`."""
    import os

    from edgekit.console import divert_third_party_output

    if quiet:
        os.environ["EDGEKIT_PROGRESS"] = "0"
    if not verbose:
        divert_third_party_output()


@app.command()
def export(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML, e.g. recipes/yolov5n.yaml")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder for models and report")] = Path("runs/edgekit"),
    overwrite: Annotated[bool, typer.Option(help="replace what an existing, non-empty output folder holds")] = False,
    force: Annotated[bool, typer.Option("--force", help="run even when the memory estimate exceeds the memory available")] = False,
    json_summary: Annotated[bool, typer.Option("--json", help="print the report summary as JSON on stdout (for scripts) instead of the table")] = False,
) -> None:
    """Run a recipe: FP32 ONNX, fused ONNX, INT8 Q/DQ ONNX, accuracy, latency, report.json and report.md.

    Example: edgekit export recipes/yolov5n.yaml --out runs/yolov5n
    """
    from edgekit.job import run_recipe
    from edgekit.recipe import load_recipe

    report = run_recipe(load_recipe(recipe), recipe, out, overwrite, force)
    if json_summary:
        from edgekit.reports.summary import report_summary

        print(json.dumps(report_summary(report, out / "report.json"), indent=2))
        return
    _print_variants(report)
    console.print(f"report: {out / 'report.json'}  {out / 'report.md'}")


def _metric_cells(variant, metrics: list[str]) -> list[str]:
    """One cell per metric; "-" where the variant has none (a simulated decoder has no latency-derived metrics)."""
    return [f"{variant.metrics[m]:.4f}" if m in variant.metrics else "-" for m in metrics]


def _print_variants(report) -> None:
    from edgekit.reports.budget import budget_cell

    table = Table(title=f"edgekit: {report.recipe['name']}")
    metrics = list(report.budgets) or sorted({m for v in report.variants for m in v.metrics if m in ("mAP50-95", "mAP50")})
    if any("decode_tokens_per_s" in v.metrics for v in report.variants):  # VLM: the latency column is time to first token
        metrics.append("decode_tokens_per_s")
    for col in ["variant", *metrics, "median ms", "p90 ms", "size MB", "budget"]:
        table.add_column(col)
    for v in report.variants:
        cell = budget_cell(report, v)
        verdict = cell.state if cell.state in ("PASS", "FAIL") else "-"
        lat = v.latency_ms
        if v.status == "not_built":
            table.add_row(v.name, *["-"] * len(metrics), "-", "-", f"{v.size_bytes / 1e6:.2f}", "not built")
            continue
        if v.status == "simulated":  # accuracy from the engine's graph run on the CPU; no engine, no latency
            table.add_row(v.name, *_metric_cells(v, metrics), "-", "-", f"{v.size_bytes / 1e6:.2f}", f"{verdict} (simulated)")
            continue
        if any(c.latency_ms for c in v.components.values()):  # per graph: "vision 24.5 / text 4.8"
            medians = " / ".join(f"{n} {c.latency_ms.median:.2f}" for n, c in v.components.items() if c.latency_ms)
            p90s = " / ".join(f"{n} {c.latency_ms.p90:.2f}" for n, c in v.components.items() if c.latency_ms)
        else:
            medians, p90s = (f"{lat.median:.2f}", f"{lat.p90:.2f}") if lat else ("-", "-")
        table.add_row(v.name, *_metric_cells(v, metrics), medians, p90s, f"{v.size_bytes / 1e6:.2f}", verdict)
    console.print(table)


@app.command("eval")
def eval_(
    model: Annotated[Path, typer.Argument(help="YOLO detector: .onnx, OpenVINO .xml, .tflite (edgekit/Ultralytics output layout)")],
    images: Annotated[Path | None, typer.Option(help="image folder (default: the COCO subset in EDGEKIT_ASSETS)")] = None,
    annotations: Annotated[Path | None, typer.Option(help="COCO instances JSON")] = None,
    input_size: Annotated[int | None, typer.Option(help="input side; default: from the model")] = None,
    threads: Annotated[int, typer.Option(help="intra-op threads")] = 2,
    max_images: Annotated[int | None, typer.Option(help="evaluate the first N images only")] = None,
    backend: Annotated[str | None, typer.Option(help="a registered backend, e.g. onnxruntime, openvino, tflite, tensorrt (default: the one reading the file suffix)")] = None,
    allow_missing_images: Annotated[bool, typer.Option(help="score the annotated images found in --images instead of refusing a folder that lacks some")] = False,
) -> None:
    """COCO mAP50-95 / mAP50 of a YOLO model on any backend.

    Example: edgekit eval runs/yolov5n/model_int8.onnx --max-images 50
    """
    from edgekit import progress
    from edgekit.assets import assets_dir
    from edgekit.evaluators.coco import coco_images
    from edgekit.evaluators.detection import evaluate_detector
    from edgekit.models.yolo.family import YoloFamily
    from edgekit.runners import runner_for_file

    if max_images is not None and max_images < 1:
        raise EdgekitError(f"--max-images must be at least 1 (got {max_images})", fix="omit --max-images to evaluate every image")
    if input_size is not None and input_size < 1:
        raise EdgekitError(f"--input-size must be positive (got {input_size})", fix="omit --input-size to read it from the model")
    coco = assets_dir() / "coco_val2017_subset"
    images = images or coco / "images"
    annotations = annotations or coco / "annotations" / "instances_val2017_subset.json"
    coco_images(annotations, images, allow_missing_images)  # a bad dataset fails before the model is loaded
    with runner_for_file(model, backend, threads) as runner:
        if len(runner.outputs) == 2 and hasattr(runner, "output_names"):  # edgekit's LiteRT detector layout: boxes, scores
            runner.output_names = ["boxes", "scores"]
        family = YoloFamily.from_runner_metadata(runner.inputs, runner.outputs, input_size, source=model)
        result = evaluate_detector(runner, family, images, annotations, max_images=max_images, progress=progress.track, allow_missing=allow_missing_images)
    for note in result.notes:
        console.print(f"note: {note}")
    table = Table(title=f"COCO accuracy: {model.name} ({result.num_images} images)")
    table.add_column("metric")
    table.add_column("value")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)


@app.command()
def bench(
    model: Annotated[Path, typer.Argument(help="model file: .onnx, OpenVINO .xml, .tflite, TensorRT .engine")],
    runs: Annotated[int, typer.Option(help="timed runs")] = 50,
    warmup: Annotated[int, typer.Option(help="untimed warm-up runs")] = 10,
    threads: Annotated[int, typer.Option(help="intra-op threads")] = 2,
    batch: Annotated[int, typer.Option(help="batch size for dynamic-batch models")] = 1,
    backend: Annotated[str | None, typer.Option(help="a registered backend, e.g. onnxruntime, openvino, tflite, tensorrt (default: the one reading the file suffix)")] = None,
) -> None:
    """Latency (median/p90/p99/min), throughput, size and peak memory on any backend, with the device fingerprint.

    Example: edgekit bench runs/yolov5n/openvino/model_int8.xml --runs 100 --threads 2
    """
    import numpy as np

    from edgekit.profiling.device import device_fingerprint
    from edgekit.profiling.latency import measure_latency
    from edgekit.profiling.memory import PeakMemory, model_size_bytes
    from edgekit.runners import runner_for_file

    rng = np.random.default_rng(0)
    with PeakMemory() as memory, runner_for_file(model, backend, threads) as runner:
        feed = {}
        for meta in runner.inputs:
            shape = [batch if i == 0 and not isinstance(d, int) else (d if isinstance(d, int) else 1) for i, d in enumerate(meta.shape)]
            feed[meta.name] = rng.random(shape).astype(meta.dtype) if meta.dtype.kind == "f" else np.zeros(shape, meta.dtype)
        stats = measure_latency(runner, feed, warmup, runs, batch, progress=True)
    device = device_fingerprint()
    table = Table(title=f"{model.name} on {runner.backend}: {device.get('cpu_model', '?')}, {threads} threads, batch {batch}")
    for col in ("median ms", "p90 ms", "p99 ms", "min ms", "throughput/s", "size MB", "peak MB"):
        table.add_column(col)
    table.add_row(f"{stats.median:.2f}", f"{stats.p90:.2f}", f"{stats.p99:.2f}", f"{stats.min:.2f}", f"{stats.throughput_per_s:.1f}", f"{model_size_bytes(model) / 1e6:.2f}", f"{memory.peak_mb:.0f}")
    console.print(table)


@app.command()
def inspect(
    model: Annotated[Path | None, typer.Argument(help="ONNX model")] = None,
    passes: Annotated[bool, typer.Option("--passes", help="list the available fusion passes")] = False,
) -> None:
    """Inputs, outputs, opset, operator counts, Q/DQ counts, size and edgekit provenance of an ONNX model.

    Example: edgekit inspect runs/yolov5n/model_int8.onnx
    """
    if passes:
        from edgekit.passes import available_passes, get_pass

        for name in available_passes():
            console.print(f"[bold]{name}[/]: {get_pass(name).description}")
        return
    if model is None:
        raise EdgekitError("no model given", fix="edgekit inspect MODEL.onnx, or edgekit inspect --passes")
    from onnx import helper

    from edgekit.onnx_io import load_onnx
    from edgekit.profiling.memory import model_size_bytes

    proto = load_onnx(model)
    g = proto.graph
    inits = {i.name for i in g.initializer}

    def shape(v) -> str:
        dims = [d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim]
        return f"{v.name}: {helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)} [{', '.join(dims)}]"

    console.print(f"[bold]{model}[/]  {model_size_bytes(model) / 1e6:.2f} MB  producer {proto.producer_name} {proto.producer_version}")
    console.print("opsets: " + ", ".join(f"{o.domain or 'ai.onnx'}={o.version}" for o in proto.opset_import))
    for v in g.input:
        if v.name not in inits:
            console.print("input  " + shape(v))
    for v in g.output:
        console.print("output " + shape(v))
    ops = Counter(n.op_type for n in g.node)
    console.print(f"nodes {len(g.node)}, initializers {len(g.initializer)}, Q/DQ pairs {ops.get('QuantizeLinear', 0)}/{ops.get('DequantizeLinear', 0)}")
    console.print("ops: " + ", ".join(f"{k} {v}" for k, v in ops.most_common()))
    for prop in proto.metadata_props:
        console.print(f"meta {prop.key}: {prop.value[:200]}")


@app.command()
def build(
    run: Annotated[Path, typer.Argument(help="a folder written by `edgekit export` with tensorrt targets")],
    precision: Annotated[str | None, typer.Option(help="build only this precision (fp32, fp16, int8)")] = None,
) -> None:
    """Build the run's TensorRT engines on this device (TensorRT Python API, or trtexec), each with its manifest.

    Example: edgekit build runs/yolov5n --precision int8
    """
    from edgekit.backends.tensorrt.builder import build_from_run

    for engine in build_from_run(run, precision):
        console.print(f"built {engine} (manifest {engine.name}.json)")


@app.command("embed-labels")
def embed_labels_(
    run: Annotated[Path, typer.Argument(help="a CLIP run folder written by `edgekit export`")],
    labels: Annotated[Path, typer.Option(help="text file, one class name per line")],
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write the (classes, dim) float32 .npy")],
    template: Annotated[list[str] | None, typer.Option(help="prompt template with '{}' (repeat to ensemble); default 'a photo of a {}.'")] = None,
    target: Annotated[str, typer.Option(help="whose text tower encodes the prompts")] = "onnxruntime:fp32",
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
) -> None:
    """Zero-shot class embeddings for on-device classification: logits = image_embeds @ embeddings.T.

    Example: edgekit embed-labels runs/clip --labels labels.txt --out labels.npy
    """
    import numpy as np

    from edgekit.artifacts import atomic_path
    from edgekit.models.clip.labels import embed_labels, read_labels

    if out.exists() and not overwrite:
        raise EdgekitError("output file already exists", out, "pass --overwrite, or choose another --out")
    names = read_labels(labels)
    embeddings = embed_labels(run, names, template, target)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.save(fh, embeddings.astype(np.float32))
    console.print(f"{out}: {embeddings.shape[0]} classes x {embeddings.shape[1]} (float32, unit rows), from {target}'s text tower")


@app.command()
def generate(
    run: Annotated[Path, typer.Argument(help="a VLM run folder written by `edgekit export` (e.g. recipes/smolvlm.yaml)")],
    prompt: Annotated[str, typer.Option(help="the question or instruction")],
    image: Annotated[Path | None, typer.Option(help="JPEG/PNG image (omit for a text-only prompt)")] = None,
    target: Annotated[str | None, typer.Option(help="which exported target runs, e.g. onnxruntime:int4 (default: the recipe's first)")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="stop after this many tokens (or at end of turn); prompt tokens + this must fit the model's context")] = 64,
    threads: Annotated[int, typer.Option(help="intra-op threads")] = 2,
) -> None:
    """Greedy generation with the exported ONNX graphs (vision, embedding, KV-cache decoder), streamed to stdout.

    A prompt whose tokens (image tokens included) plus --max-new-tokens exceed the model's context is refused before
    anything runs.

    Example: edgekit generate runs/smolvlm --prompt "Describe the image." --image cat.jpg --max-new-tokens 32
    """
    from edgekit.models.vlm.runtime import generate_in_run

    printed = ""

    def show(text: str) -> None:
        nonlocal printed
        if text.startswith(printed):
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text

    result, name = generate_in_run(run, prompt, image, target, max_new_tokens, threads, show)
    sys.stdout.write("\n")
    err_console.print(f"{name}: {len(result.tokens)} tokens, time to first token {result.ttft_s * 1e3:.0f} ms, "
                      f"decode {result.decode_tokens_per_s:.1f} tokens/s", highlight=False)


@app.command()
def check(
    report: Annotated[Path, typer.Argument(help="report.json written by `edgekit export`")],
    require_all: Annotated[bool, typer.Option("--require-all", help="also fail when a target could not be built here (e.g. TensorRT without a GPU)")] = False,
    confidence: Annotated[float | None, typer.Option("--confidence", help="also gate on the upper bound of the drop's paired bootstrap interval at this confidence (0.8, 0.9, 0.95 or 0.99)")] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="also write JUnit XML here: one test case per variant x budget")] = None,
    github: Annotated[bool, typer.Option("--github", help="also print GitHub Actions annotations and append a Markdown table to $GITHUB_STEP_SUMMARY")] = False,
    json_summary: Annotated[bool, typer.Option("--json", help="print the report summary and verdict as JSON on stdout instead of lines")] = False,
) -> None:
    """Exit 0 when every budget of every measured target holds, 1 (naming target, metric, drop and budget) when one
    does not, 2 on bad input (a missing, edited or invalid report).

    Example: edgekit check runs/yolov5n/report.json --confidence 0.95 --junit results.xml --github

    The report is verified first (exit 2 naming what differs): its digest, its budgets, reference and statuses
    against the recipe and the reference rule, and, when the run folder is beside it, every file's sha256.
    Each verdict shows its paired bootstrap interval over the evaluation images; with --confidence a budget holds
    only when the interval's upper bound (at that confidence) is within it too, and a metric without an interval fails.
    """
    from edgekit.reports import check_report, load_report, report_file, verify_report
    from edgekit.reports.budget import check_confidence

    if confidence is not None:
        check_confidence(confidence, source=report)
    loaded = load_report(report)
    for note in verify_report(loaded, report):
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    ok, lines = check_report(loaded, require_all, report_file(report), confidence)
    _ci_outputs(loaded, report, require_all, confidence, junit, github)
    if json_summary:
        from edgekit.reports.summary import report_summary

        print(json.dumps({**report_summary(loaded, report_file(report)), "passed": ok, "lines": lines}, indent=2))
        raise typer.Exit(0 if ok else 1)
    for line in lines:
        bad = "FAIL" in line or (require_all and "SKIPPED" in line)
        (err_console if bad else console).print(line, markup=False, highlight=False, soft_wrap=True)
    if not ok:
        raise typer.Exit(1)
    console.print("all budgets hold")


def _ci_outputs(report, source: Path, require_all: bool, confidence: float | None, junit: Path | None, github: bool) -> None:
    """JUnit XML (written atomically, never over an existing file of another kind) and GitHub Actions output."""
    import os

    from edgekit.artifacts import write_bytes_atomic
    from edgekit.reports.summary import github_annotations, junit_xml, markdown_summary

    if junit is not None:
        if junit.is_dir():
            raise EdgekitError("--junit names a folder", junit, "give a file path, e.g. results.xml")
        write_bytes_atomic(junit, junit_xml(report, require_all, confidence))
    if github:
        recipe = report.recipe.get("path")
        for line in github_annotations(report, str(recipe) if recipe else None, require_all, confidence):
            print(line)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            with open(summary, "a", encoding="utf-8") as f:
                f.write(markdown_summary(report, require_all, confidence))


@app.command()
def compare(
    reports: Annotated[list[Path], typer.Argument(help="run folders or report.json files; the first is the baseline")],
    html: Annotated[Path | None, typer.Option("--html", help="also write the comparison page here (default: none; never overwritten)")] = None,
) -> None:
    """The same recipe on several devices or versions side by side: accuracy, latency ratios, size per device. Exit 1
    on a regression against the first report (an accuracy drop beyond the recipe's budget anywhere; a slowdown
    beyond the measured noise on the same device fingerprint), 2 on bad input.

    Example: edgekit compare runs/xeon runs/jetson-orin --html compare.html
    """
    from edgekit.reports import load_report, report_file
    from edgekit.reports.compare import compare_reports, label_for, render_compare_html, rows

    if len(reports) < 2:
        raise EdgekitError("compare needs two or more reports", reports[0] if reports else None, "pass a baseline run and the runs to compare with it")
    if html is not None and html.exists():
        raise EdgekitError("the --html file exists (not overwritten)", html, "choose another path or delete it")
    files = [report_file(r) for r in reports]
    labels = [label_for(f) for f in files]
    labels = labels if len(set(labels)) == len(labels) else [str(f) for f in files]
    result = compare_reports([(label, load_report(f)) for label, f in zip(labels, files)])
    header, table_rows = rows(result)
    table = Table(title="edgekit compare (baseline: " + labels[0] + ")")
    for col in header:
        table.add_column(col)
    for row in table_rows:
        table.add_row(*row)
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    if html is not None:
        from edgekit.artifacts import write_text_atomic

        write_text_atomic(html, render_compare_html(result))
        console.print(f"page: {html}")
    for line in result.regressions:
        err_console.print(f"REGRESSION {line}", markup=False, highlight=False, soft_wrap=True)
    if result.regressions:
        raise typer.Exit(1)
    console.print("no regression")


@app.command()
def sensitivity(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML (its calibration, tuning and quantization settings are used)")],
    top: Annotated[int, typer.Option(help="show the N most sensitive groups per graph (0: all)")] = 15,
    both: Annotated[bool, typer.Option("--both", help="also score each group quantized alone (everything else float; twice the time)")] = False,
    runs: Annotated[int, typer.Option(help="timed runs per candidate for its latency")] = 20,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the full tables as JSON here (not overwritten)")] = None,
    force: Annotated[bool, typer.Option("--force", help="run even when the memory estimate exceeds the memory available")] = False,
) -> None:
    """Per quantizer group (a conv with its SiLU, an attention block's MatMuls...): the tuning-metric loss when only that
    group is left float, and its latency cost on this device (ONNX Runtime). Label-free, on the tuning images; the
    evaluation set is never read. Nothing is written unless --json is given.

    Example: edgekit sensitivity recipes/yolov5n.yaml --top 10 --json sensitivity.json
    """
    from edgekit.artifacts import write_json_atomic
    from edgekit.job import run_sensitivity
    from edgekit.recipe import load_recipe

    if json_out is not None and json_out.exists():
        raise EdgekitError("the --json file exists (not overwritten)", json_out, "choose another path or delete it")
    tables = run_sensitivity(load_recipe(recipe), recipe, both, runs, force)
    for name, table in tables.items():
        console.print(f"[bold]{name}[/]")
        console.print(table.render(limit=top or None))
    if json_out is not None:
        write_json_atomic(json_out, {name: t.to_dict() for name, t in tables.items()})
        console.print(f"tables: {json_out}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """edgekit's warnings (e.g. a too-small calibration set) as one readable line, not a source dump; other
    libraries' warnings go to the third-party log unless --verbose."""
    from edgekit.console import diverted

    ours = category.__module__.startswith("edgekit") or Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent)
    if not ours and diverted():
        print(f"{filename}:{lineno}: {category.__name__}: {message}", file=sys.stderr)
        return
    err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised where the run is so that its cleanup (the staging folder) runs; not a
    KeyboardInterrupt, which typer would turn into a silent exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame) -> None:
    raise Interrupted(signum)


def _error(message: str) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    """Console entry point: user errors (and a full disk, a read-only folder...) print one line and exit 2 with no
    traceback; SIGINT exits 130 and SIGTERM 143, each after the run removed its staging folder."""
    import signal
    import warnings

    from edgekit.console import restore_stderr
    from edgekit.errors import environment_error

    warnings.showwarning = _show_warning
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)
    try:
        app()
    except BaseException as exc:  # noqa: BLE001 -- sorted below; anything else is re-raised with its traceback
        if isinstance(exc, SystemExit):
            raise
        stop = _interruption(exc)
        err = environment_error(exc) if isinstance(exc, OSError) else exc
        if stop is None and not isinstance(err, EdgekitError):  # a bug: its traceback and the third-party log it came with
            side_log = restore_stderr()
            if side_log:
                _error(f"unexpected {type(exc).__name__}; third-party output of this run: {side_log}")
            raise
        if stop is not None:  # also when an import turned the signal into an ImportError (pybind11 does)
            _error(f"interrupted ({signal.Signals(stop.signum).name}): stopped, and removed what this run had written; --out is unchanged")
            sys.exit(128 + stop.signum)
        _error(str(err))
        sys.exit(EdgekitError.exit_code)


def _interruption(exc: BaseException | None) -> Interrupted | None:
    """The signal behind ``exc``, found along its cause/context chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Interrupted):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    main()
