"""YOLOv5n INT8 on ONNX Runtime: edgekit vs peer pipelines vs FP32, in one process.

For every variant: mAP50-95/mAP50 on the 158 COCO images, drop vs FP32, quantization time and peak memory,
model size, and latency median/p90 measured round-robin across all variants (same image, same threads), so the
ratios are robust to machine noise. Prints a table and writes JSON.

    python benchmarks/yolov5n_ort_int8.py [--runs 50] [--threads 2] [--skip-peers] [--max-images N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgekit.artifacts import write_json_atomic  # noqa: E402
from edgekit.assets import assets_dir  # noqa: E402
from edgekit.evaluators.detection import evaluate_detector  # noqa: E402
from edgekit.export import export_onnx  # noqa: E402
from edgekit.models.yolo.family import YoloFamily  # noqa: E402
from edgekit.passes import run_passes  # noqa: E402
from edgekit.profiling.device import device_fingerprint  # noqa: E402
from edgekit.profiling.latency import measure_latency_interleaved  # noqa: E402
from edgekit.profiling.memory import PeakMemory  # noqa: E402
from edgekit.quantization.ptq import quantize_static  # noqa: E402
from edgekit.runners.onnxruntime import OnnxRuntimeRunner  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / ".work")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "yolov5n_ort_int8.json")
    args = parser.parse_args()
    console = Console(width=180)
    assets = assets_dir()
    coco = assets / "coco_val2017_subset"
    annotations = coco / "annotations" / "instances_val2017_subset.json"
    calib = sorted((coco / "calib_images").iterdir())
    args.work.mkdir(parents=True, exist_ok=True)

    family = YoloFamily(input_size=640)
    model = family.load_torch(assets / "yolo" / "yolov5n.safetensors")
    raw = export_onnx(model, torch.zeros(1, 3, 640, 640), args.work / "fp32_raw.onnx")
    fused, _ = run_passes(onnx.load(raw), ["constant_folding", "fuse_conv_bn", "eliminate_identity", "remove_unused", "onnxslim"])
    fp32 = args.work / "fp32.onnx"
    onnx.save(fused, fp32)
    head = family.float_nodes(fused)
    prep = lambda p: family.preprocess(p)[0]  # noqa: E731

    def edgekit_int8() -> Path:
        result = quantize_static(fused, calib, prep, method="percentile", percentile=99.99, float_nodes=head, use_cache=False)
        out = args.work / "edgekit_int8.onnx"
        onnx.save(result.model, out)
        return out

    builders = {"edgekit INT8": edgekit_int8}
    if not args.skip_peers:
        import peers

        builders["ORT conv-only S8S8 (defaults), head float"] = lambda: peers.ort_quantize_static(fp32, args.work / "ort_conv_s8.onnx", calib, prep, ["Conv"], head)
        builders["ORT conv-only U8S8, head float"] = lambda: peers.ort_quantize_static(fp32, args.work / "ort_conv_u8.onnx", calib, prep, ["Conv"], head, True)
        builders["ORT all ops (defaults)"] = lambda: peers.ort_quantize_static(fp32, args.work / "ort_all.onnx", calib, prep, None, [])
        builders["NNCF ONNX, head ignored"] = lambda: peers.nncf_quantize(fp32, args.work / "nncf.onnx", calib, prep, head)

    rows: dict[str, dict] = {"FP32": {"path": fp32, "quantize_s": None, "quantize_peak_mb": None}}
    for name, build in builders.items():
        console.log(f"quantizing: {name}")
        start = time.perf_counter()
        try:
            with PeakMemory() as memory:
                path = build()
            rows[name] = {"path": path, "quantize_s": round(time.perf_counter() - start, 1), "quantize_peak_mb": round(memory.peak_mb)}
        except Exception as exc:  # a peer failing is a result, not a crash
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}

    runners = {}
    for name, row in rows.items():
        if "error" in row:
            continue
        runner = OnnxRuntimeRunner(row["path"], threads=args.threads)
        runner.load()
        runners[name] = runner
        console.log(f"evaluating: {name}")
        result = evaluate_detector(runner, family, coco / "images", annotations, max_images=args.max_images)
        row.update(mAP50_95=result.metrics["mAP50-95"], mAP50=result.metrics["mAP50"], detections=result.num_detections, size_bytes=row["path"].stat().st_size)
    feed = family.preprocess(sorted((coco / "images").iterdir())[0])[0]
    console.log(f"latency: {args.runs} runs round-robin over {len(runners)} models")
    stats = measure_latency_interleaved({n: (r, feed) for n, r in runners.items()}, args.warmup, args.runs)
    base = rows["FP32"]
    for name, s in stats.items():
        rows[name].update(median_ms=round(s.median, 2), p90_ms=round(s.p90, 2), ratio_vs_fp32=round(s.median / stats["FP32"].median, 3))
        rows[name]["drop_pt"] = round(100 * (base["mAP50_95"] - rows[name]["mAP50_95"]), 2)

    table = Table(title=f"YOLOv5n INT8 on ONNX Runtime ({args.threads} threads, {args.runs} runs, {len(calib)} calibration images)")
    for col in ("variant", "mAP50-95", "mAP50", "drop pt", "median ms", "p90 ms", "x FP32 time", "size MB", "quantize s", "quantize peak MB"):
        table.add_column(col)
    for name, row in rows.items():
        if "error" in row:
            table.add_row(name, f"failed: {row['error'][:60]}", *[""] * 8)
            continue
        table.add_row(
            name, f"{row['mAP50_95']:.4f}", f"{row['mAP50']:.4f}", f"{row['drop_pt']:+.2f}" if name != "FP32" else "-", f"{row['median_ms']:.2f}",
            f"{row['p90_ms']:.2f}", f"{row['ratio_vs_fp32']:.2f}", f"{row['size_bytes'] / 1e6:.2f}", str(row["quantize_s"] or "-"), str(row["quantize_peak_mb"] or "-"),
        )
    console.print(table)
    device = device_fingerprint()
    payload = {
        "benchmark": "yolov5n_ort_int8",
        "settings": {"runs": args.runs, "warmup": args.warmup, "threads": args.threads, "calibration_images": len(calib), "max_images": args.max_images},
        "device": device,
        "variants": {name: {k: (str(v) if isinstance(v, Path) else v) for k, v in row.items()} for name, row in rows.items()},
    }
    write_json_atomic(args.out, payload)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
