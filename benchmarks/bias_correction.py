"""Does bias correction help ORT's INT8 YOLOv5n? Three range methods, each without and with
:func:`edgekit.quantization.bias_correction.correct_biases`, on the run's own fused FP32 graph.

Ranges come from the 109 calibration images; the correction measures its mean shifts on the first ``--bc`` of them
(float inputs, per layer). Tuning loss = ``100 (1 - pseudo_map@0.5)`` against FP32's detections on all calibration
images (label-free, what ``bias_correction: auto`` decides on). The 158 labelled evaluation images only measure:
the true mAP50-95 drop vs FP32 with its paired bootstrap 95% interval. Nothing here chooses a shipped setting.

    python benchmarks/bias_correction.py RUN_DIR [--bc 32] [--threads 2] [--out FILE]

``RUN_DIR``: a finished ``edgekit export`` of a YOLOv5n recipe (its ``model_fp32.onnx`` is used).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgekit.artifacts import write_json_atomic
from edgekit.assets import assets_dir
from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner
from edgekit.evaluators.bootstrap import paired_interval
from edgekit.evaluators.detection import evaluate_detector
from edgekit.models.yolo.family import YoloFamily
from edgekit.onnx_io import load_onnx, save_onnx
from edgekit.profiling.device import device_fingerprint
from edgekit.quantization.bias_correction import correct_biases
from edgekit.quantization.calibration import calibration_images, collect_ranges
from edgekit.quantization.placement import ORT_PLACEMENT, quantized_nodes
from edgekit.quantization.ptq import calibration_settings, place, tensors_for_placements
from edgekit.tuning.scorer import DetectionScorer

METHODS = (("percentile:99.99", "percentile", 99.99), ("percentile:99.999", "percentile", 99.999), ("mse", "mse", 99.99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--bc", type=int, default=32, help="calibration images the correction measures on")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bias_correction.json")
    args = ap.parse_args()
    console, start = Console(), time.perf_counter()
    coco = assets_dir() / "coco_val2017_subset"
    family = YoloFamily(input_size=640)
    family.load_torch(assets_dir() / "yolo" / "yolov5n.safetensors")  # the head's layout (decode nodes kept float)
    fp32_path = args.run / "model_fp32.onnx"
    fp32 = load_onnx(fp32_path)
    keep = family.float_nodes(fp32)
    tensors = tensors_for_placements(fp32, [ORT_PLACEMENT], keep, [])
    nodes = quantized_nodes(fp32, ORT_PLACEMENT, keep, [])
    calib = calibration_images(coco / "calib_images", 109)
    prep = lambda p: family.preprocess(p)[0]  # noqa: E731
    scorer = DetectionScorer(fp32_path, calib, family, args.threads)

    def evaluate(path: Path):
        with OnnxRuntimeRunner(path, threads=args.threads) as runner:
            return evaluate_detector(runner, family, coco / "images", coco / "annotations" / "instances_val2017_subset.json")

    reference = evaluate(fp32_path)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, method, pct in METHODS:
            ranges = collect_ranges(fp32, tensors, calib, prep, method, pct, args.threads)
            settings = calibration_settings(method, pct, True, len(calib), ranges.key)
            base, spec = place(fp32, ORT_PLACEMENT, ranges.ranges, keep, [], settings)
            t0 = time.perf_counter()
            corrected, info = correct_biases(fp32, spec, nodes, calib[: args.bc], prep, args.threads)
            bc_s = time.perf_counter() - t0
            for corrected_too, model in ((False, base), (True, place(corrected, ORT_PLACEMENT, ranges.ranges, keep, [], settings)[0])):
                path = Path(tmp) / f"{name}_{corrected_too}.onnx"
                save_onnx(model, path)
                result = evaluate(path)
                iv = paired_interval(reference.records.metric("mAP50-95"), result.records.metric("mAP50-95"))
                rows.append({"ranges": name, "bias_correction": corrected_too, "tuning_loss_pt": scorer.loss_pt(scorer.score(path)),
                             "drop_pt": round(100 * (reference.metrics["mAP50-95"] - result.metrics["mAP50-95"]), 2),
                             "drop_ci95_pt": [round(100 * iv.low, 2), round(100 * iv.high, 2)],
                             "correction_s": round(bc_s, 1) if corrected_too else None, "correction": info if corrected_too else None})
                console.log(rows[-1])
    table = Table(title=f"YOLOv5n 640 ORT int8: bias correction ({args.bc} images), tuning loss on {len(calib)} calibration images, "
                        f"drop on {reference.num_images} evaluation images")
    for col in ("ranges", "bias correction", "tuning loss pt", "drop pt [95% CI]", "correction s"):
        table.add_column(col, justify="left" if col == "ranges" else "right")
    for r in rows:
        table.add_row(r["ranges"], "yes" if r["bias_correction"] else "no", f"{r['tuning_loss_pt']:.2f}",
                      f"{r['drop_pt']:+.2f} [{r['drop_ci95_pt'][0]:+.2f}, {r['drop_ci95_pt'][1]:+.2f}]", f"{r['correction_s'] or 0:.1f}")
    console.print(table)
    write_json_atomic(args.out, {"benchmark": "bias_correction", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                 "settings": {"bias_correction_images": args.bc, "calibration_images": len(calib), "threads": args.threads,
                                              "command": " ".join(sys.argv), "fp32": str(fp32_path)},
                                 "device": device_fingerprint(), "seconds": round(time.perf_counter() - start, 1), "rows": rows})
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
