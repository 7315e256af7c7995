"""Device fingerprint: CPU model and ISA flags, cores, memory, OS, library versions, GPU/Jetson when present."""

from __future__ import annotations

import platform
import shutil
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import psutil

FLAGS_OF_INTEREST = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm", "bf16",
)
PACKAGES = ("torch", "onnx", "onnxruntime", "onnxslim", "numpy", "nncf", "openvino", "tensorrt", "ai-edge-litert", "pycocotools")


def _cpuinfo() -> tuple[str, list[str]]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and value.strip():
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    return model, [f for f in FLAGS_OF_INTEREST if f in flags]


def _run(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout.strip() or None
    except (subprocess.SubprocessError, OSError):
        return None


@lru_cache(maxsize=1)
def device_fingerprint() -> dict:
    """What this machine is, for the report (cached per process)."""
    cpu_model, flags = _cpuinfo()
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    info: dict = {
        "cpu_model": cpu_model,
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "isa_flags": flags,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": versions,
    }
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    gpu = _run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"])
    if gpu:
        info["gpus"] = [dict(zip(("name", "driver", "compute_capability"), (p.strip() for p in line.split(",")))) for line in gpu.splitlines()]
    jetson = Path("/proc/device-tree/model")
    if jetson.is_file() and "jetson" in jetson.read_text(errors="ignore").lower():
        info["jetson_model"] = jetson.read_text(errors="ignore").strip("\x00\n ")
        l4t = Path("/etc/nv_tegra_release")
        if l4t.is_file():
            info["l4t"] = l4t.read_text().splitlines()[0].strip()
        info["power_mode"] = _run(["nvpmodel", "-q"])
    return info
