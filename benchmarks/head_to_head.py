"""Time finished artifacts of earlier runs head to head in one interleaved loop (medians and ratios to the first).

Runs on one machine measured one after another are not comparable when its speed drifts (seen on a shared 2-core
VM: the same OpenVINO IR at 0.85x and 0.68x of FP32 in two runs ten minutes apart); this loop times them together.

    python benchmarks/head_to_head.py NAME=PATH [NAME=PATH ...] [--runs 100] [--threads 2] [--out FILE]

Paths ending in ``.onnx`` run on ONNX Runtime, ``.xml`` on OpenVINO (int8 precision hint, as ``openvino:int8``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edgekit.artifacts import write_json_atomic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=PATH")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image", type=Path, default=None, help="input image (default: the first COCO subset image)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from edgekit.assets import assets_dir
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner
    from edgekit.backends.openvino.builder import precision_hint
    from edgekit.backends.openvino.runner import OpenVinoRunner
    from edgekit.models.yolo.family import YoloFamily
    from edgekit.profiling.device import device_fingerprint
    from edgekit.profiling.latency import measure_latency_interleaved

    image = args.image or sorted((assets_dir() / "coco_val2017_subset" / "images").iterdir())[0]
    feed = YoloFamily(input_size=640).preprocess(image)[0]
    cases = {}
    for spec in args.models:
        name, _, path = spec.partition("=")
        runner = OnnxRuntimeRunner(path, threads=args.threads) if path.endswith(".onnx") else \
            OpenVinoRunner(path, threads=args.threads, precision_hint=precision_hint("int8", "CPU"))
        runner.load()
        cases[name] = (runner, feed)
    stats = measure_latency_interleaved(cases, warmup=10, runs=args.runs)
    first = next(iter(stats))
    rows = {name: {"median_ms": round(s.median, 3), "ratio": round(s.median / stats[first].median, 3)} for name, s in stats.items()}
    device = device_fingerprint()
    print(f"{device.get('cpu_model')}, {args.threads} threads, {args.runs} interleaved rounds")
    for name, r in rows.items():
        print(f"  {name:40s} {r['median_ms']:8.2f} ms  {r['ratio']:.3f}x {first}")
    if args.out:
        write_json_atomic(args.out, {"benchmark": "head_to_head", "device": device, "runs": args.runs, "rows": rows, "models": args.models})


if __name__ == "__main__":
    main()
