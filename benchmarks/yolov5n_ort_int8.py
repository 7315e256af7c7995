"""YOLOv5n INT8 on ONNX Runtime: edgekit vs peer pipelines vs FP32, all in one process.

For every variant: COCO mAP50-95/mAP50 on the 158 annotated images of the shared assets, the drop vs FP32
(points), model size, quantization time and peak memory, and latency median/p90 measured round-robin across
all variants (one fixed preprocessed image, same threads, the order rotated every round) so that machine
noise hits every variant alike. Prints a table and writes JSON.

    python benchmarks/yolov5n_ort_int8.py [--runs 50] [--warmup 10] [--threads 2] [--out FILE] [--skip-peers] [--max-images N]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from collections.abc import Callable
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
from edgekit.evaluators.coco import load_coco_images  # noqa: E402
from edgekit.evaluators.detection import evaluate_detector  # noqa: E402
from edgekit.export import export_onnx  # noqa: E402
from edgekit.models.yolo.family import YoloFamily  # noqa: E402
from edgekit.profiling.device import device_fingerprint  # noqa: E402
from edgekit.profiling.latency import measure_latency_interleaved  # noqa: E402
from edgekit.profiling.memory import PeakMemory, model_size_bytes  # noqa: E402
from edgekit.quantization.ptq import quantize_static  # noqa: E402

EDGEKIT_RECIPE = {"method": "percentile", "percentile": 99.99, "per_channel": True, "float_nodes": "YoloFamily.float_nodes (head decode)"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="timed runs per variant (round-robin)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per variant before timing")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (inter-op: 1)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "yolov5n_ort_int8.json")
    parser.add_argument("--skip-peers", action="store_true", help="FP32 and edgekit INT8 only")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate on the first N images only (quick run)")
    parser.add_argument("--work", type=Path, default=HERE / ".work", help="where the models are written (git-ignored)")
    return parser.parse_args()


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def main() -> None:
    args = parse_args()
    console = Console(width=200)
    assets = assets_dir()
    coco = assets / "coco_val2017_subset"
    annotations = coco / "annotations" / "instances_val2017_subset.json"
    calib = sorted((coco / "calib_images").iterdir())
    items = load_coco_images(annotations, coco / "images")[: args.max_images or None]
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    # FP32: edgekit export (BatchNorm folded, opset 17) + onnxslim.
    family = YoloFamily(input_size=640)
    torch_model = family.load_torch(assets / "yolo" / "yolov5n.safetensors")
    raw = export_onnx(torch_model, torch.zeros(1, 3, 640, 640), args.work / "fp32_raw.onnx")
    fp32_model = onnxslim.slim(onnx.load(str(raw)))
    fp32 = args.work / "fp32.onnx"
    onnx.save(fp32_model, str(fp32))
    head = family.float_nodes(fp32_model)
    prep = lambda p: family.preprocess(p)[0]  # noqa: E731
    console.log(f"FP32 model: {fp32} ({len(fp32_model.graph.node)} nodes, {len(head)} head-decode nodes kept float)")

    def edgekit_int8() -> Path:
        result = quantize_static(fp32_model, calib, prep, method="percentile", percentile=99.99, float_nodes=head, threads=args.threads, use_cache=False)
        out = args.work / "edgekit_int8.onnx"
        onnx.save(result.model, str(out))
        return out

    builders: dict[str, tuple[Callable[[], Path], dict]] = {"edgekit INT8": (edgekit_int8, EDGEKIT_RECIPE)}
    if not args.skip_peers:
        import peers

        w = args.work
        builders.update({
            "ORT conv-only S8S8, head float": (
                lambda: peers.ort_conv_only(fp32, w / "ort_conv_s8s8.onnx", calib, prep, head),
                {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "op_types": ["Conv"], "calibration": "MinMax", "per_channel": True, "activations": "int8 (default)", "nodes_to_exclude": "head decode"},
            ),
            "ORT conv-only U8S8, head float": (
                lambda: peers.ort_conv_only(fp32, w / "ort_conv_u8s8.onnx", calib, prep, head, uint8_activations=True),
                {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "op_types": ["Conv"], "calibration": "MinMax", "per_channel": True, "activations": "uint8", "nodes_to_exclude": "head decode"},
            ),
            "ORT all ops": (
                lambda: peers.ort_all_ops(fp32, w / "ort_all_ops.onnx", calib, prep),
                {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "op_types": "default (all)", "calibration": "MinMax", "per_channel": True, "nodes_to_exclude": []},
            ),
            "NNCF default preset, head ignored": (
                lambda: peers.nncf_onnx(fp32, w / "nncf_default.onnx", calib, prep, head),
                {"tool": "nncf.quantize (ONNX)", "preset": "default (performance)", "subset_size": len(calib), "ignored_scope": "head decode"},
            ),
            "NNCF MIXED preset, head ignored": (
                lambda: peers.nncf_onnx(fp32, w / "nncf_mixed.onnx", calib, prep, head, preset="mixed"),
                {"tool": "nncf.quantize (ONNX)", "preset": "mixed", "subset_size": len(calib), "ignored_scope": "head decode"},
            ),
        })

    rows: dict[str, dict] = {"FP32": {"recipe": {"export": "edgekit.export.export_onnx (opset 17, BN folded) + onnxslim.slim"}, "path": fp32}}
    for name, (build, recipe) in builders.items():
        console.log(f"quantizing: {name}")
        rows[name] = {"recipe": recipe}
        gc.collect()
        start = time.perf_counter()
        try:
            with PeakMemory() as memory:
                path = build()
        except Exception as exc:  # a failing peer is a result, not a crash
            rows[name]["error"] = f"quantize: {short_error(exc)}"
            console.log(f"[red]{name} failed[/red]: {rows[name]['error']}")
            console.log(traceback.format_exc(limit=3))
            continue
        rows[name].update(path=path, quantize_s=round(time.perf_counter() - start, 1), quantize_peak_rss_mb=round(memory.peak_mb), quantize_rss_increase_mb=round(memory.delta_mb))

    runners: dict[str, OnnxRuntimeRunner] = {}
    for name, row in rows.items():
        if "error" in row:
            continue
        console.log(f"evaluating: {name} on {len(items)} images")
        try:
            runner = OnnxRuntimeRunner(row["path"], threads=args.threads)
            runner.load()
            result = evaluate_detector(runner, family, coco / "images", annotations, max_images=args.max_images)
            row.update(mAP50_95=result.metrics["mAP50-95"], mAP50=result.metrics["mAP50"], detections=result.num_detections, size_bytes=model_size_bytes(row["path"]))
            runners[name] = runner
        except Exception as exc:
            row["error"] = f"run: {short_error(exc)}"
            console.log(f"[red]{name} failed[/red]: {row['error']}")

    feed_image = items[0][1]
    feed = family.preprocess(feed_image)[0]
    console.log(f"latency: {args.warmup} warm-up + {args.runs} timed runs round-robin over {len(runners)} models on {feed_image.name}")
    stats = {name: s.to_dict() for name, s in measure_latency_interleaved({n: (r, feed) for n, r in runners.items()}, args.warmup, args.runs).items()}
    base_ms = stats["FP32"]["median"]
    base = rows["FP32"]
    for name, s in stats.items():
        row = rows[name]
        row.update(median_ms=round(s["median"], 2), p90_ms=round(s["p90"], 2), latency=s, ratio_vs_fp32=round(s["median"] / base_ms, 3))
        row["drop_pt"] = round(100 * (base["mAP50_95"] - row["mAP50_95"]), 2)
        row["drop50_pt"] = round(100 * (base["mAP50"] - row["mAP50"]), 2)
        row["size_ratio_vs_fp32"] = round(row["size_bytes"] / base["size_bytes"], 3)

    title = f"YOLOv5n INT8 on ONNX Runtime, {len(items)} COCO val2017 images, {len(calib)} calibration images, {args.threads} threads, {args.runs} runs round-robin"
    table = Table(title=title)
    for col in ("variant", "mAP50-95", "mAP50", "drop pt", "median ms", "p90 ms", "x FP32 time", "size MB", "quantize s", "quantize peak RSS MB (+increase)"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, row in rows.items():
        if "error" in row:
            table.add_row(name, f"[red]failed[/red] {row['error'][:110]}", *[""] * 8)
            continue
        peak = f"{row['quantize_peak_rss_mb']} (+{row['quantize_rss_increase_mb']})" if "quantize_peak_rss_mb" in row else "-"
        table.add_row(
            name, f"{row['mAP50_95']:.4f}", f"{row['mAP50']:.4f}", "-" if name == "FP32" else f"{row['drop_pt']:+.2f}", f"{row['median_ms']:.2f}",
            f"{row['p90_ms']:.2f}", f"{row['ratio_vs_fp32']:.2f}", f"{row['size_bytes'] / 1e6:.2f}", str(row.get("quantize_s", "-")), peak,
        )
    console.print(table)
    console.print("drop pt = FP32 mAP50-95 minus variant mAP50-95, in points; x FP32 time = median latency / FP32 median latency")

    payload = {
        "benchmark": "yolov5n_ort_int8",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "runs": args.runs, "warmup": args.warmup, "threads": args.threads, "inter_op_threads": 1, "input_size": 640,
            "eval_images": len(items), "max_images": args.max_images, "calibration_images": len(calib), "latency_image": feed_image.name,
            "postprocess": {"conf": 0.001, "iou": 0.65, "max_det": 300}, "skip_peers": args.skip_peers,
            "head_float_nodes": len(head), "command": " ".join(sys.argv),
        },
        "device": device_fingerprint(),
        "variants": {name: {k: (str(v) if isinstance(v, Path) else v) for k, v in row.items()} for name, row in rows.items()},
    }
    write_json_atomic(args.out, payload)  # temp file in the same folder, then os.replace
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
