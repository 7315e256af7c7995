"""Peak memory of one target's generation, measured in a fresh process (so other targets' sessions don't count).

``peak_rss_mb`` is the child's high-water resident set (``VmHWM``; ``ru_maxrss`` would carry the parent's peak across
``exec``) after loading the three graphs and generating; ``delta_mb`` is that peak minus the resident set after
imports, before any session was created.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError


def peak_memory(graphs: dict[str, Path], family, input_ids: np.ndarray, pixel_values: np.ndarray | None, tokens: int, threads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="edgekit-mem-") as tmp:
        feeds = Path(tmp) / "feeds.npz"
        arrays = {"input_ids": input_ids} | ({"pixel_values": pixel_values} if pixel_values is not None else {})
        np.savez(feeds, **arrays)
        job = {"graphs": {k: str(v) for k, v in graphs.items()}, "feeds": str(feeds), "cache": asdict(family.layout),
               "image_token_id": family.image_token_id, "tokens": tokens, "threads": threads}
        done = subprocess.run([sys.executable, "-m", "edgekit.models.vlm.memory_probe"], input=json.dumps(job), capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise EdgekitError(f"peak-memory probe failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}", graphs.get("decoder"))
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _main() -> None:
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner
    from edgekit.models.vlm.generate import generate
    from edgekit.models.vlm.graphs import CacheLayout

    job = json.loads(sys.stdin.read())
    feeds = dict(np.load(job["feeds"]))
    base = _status_mb("VmRSS")
    runners = {g: OnnxRuntimeRunner(p, threads=job["threads"]) for g, p in job["graphs"].items()}
    for runner in runners.values():
        runner.load()
    generate(runners, CacheLayout(**job["cache"]), feeds["input_ids"], job["image_token_id"], feeds.get("pixel_values"), job["tokens"])
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_rss_mb": round(peak, 1), "baseline_mb": round(base, 1), "delta_mb": round(peak - base, 1)}))


if __name__ == "__main__":
    _main()
