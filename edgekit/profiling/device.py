"""Device fingerprint: CPU model and ISA flags, cores, memory, OS, library versions, GPU/Jetson when present."""

from __future__ import annotations

import copy
import platform
import shutil
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

# Kernel spellings: x86 ("avx512_vnni"), aarch64 ("asimd" = NEON, "asimddp" = dot product); "neon"/"dotprod" elsewhere.
FLAGS_OF_INTEREST = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    "neon", "asimd", "asimddp", "dotprod", "sve", "i8mm", "bf16",
)
PACKAGES = ("torch", "onnx", "onnxruntime", "onnxslim", "numpy", "nncf", "openvino", "tensorrt", "ai-edge-litert", "pycocotools")
_PROC_CPUINFO = Path("/proc/cpuinfo")
_DT_MODEL = Path("/proc/device-tree/model")
_L4T_RELEASE = Path("/etc/nv_tegra_release")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="ignore").strip("\x00\n ") or None
    except OSError:
        return None


def parse_proc_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """CPU model name and the flag set from ``/proc/cpuinfo`` text (x86 ``flags``, ARM ``Features``)."""
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model", "Hardware", "cpu model") and value and model is None:
            model = value
        elif key in ("flags", "Features"):
            flags.update(value.split())
    return model, flags


@lru_cache(maxsize=1)
def _cpu() -> tuple[str, list[str]]:
    """(model, flags of interest): /proc/cpuinfo on Linux (fast); py-cpuinfo elsewhere (slow, hence cached)."""
    text = _read(_PROC_CPUINFO)
    if text:
        model, flags = parse_proc_cpuinfo(text)
    else:
        try:
            import cpuinfo

            info = cpuinfo.get_cpu_info()
            model, flags = info.get("brand_raw"), set(info.get("flags", []))
        except Exception:  # py-cpuinfo probes the OS in many ways; any failure just means "unknown"
            model, flags = None, set()
    model = model or _read(_DT_MODEL) or platform.processor() or platform.machine() or "unknown"
    return model, [f for f in FLAGS_OF_INTEREST if f in flags]


def _run(cmd: list[str], timeout: float = 3.0) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout.strip() or None
    except (subprocess.SubprocessError, OSError):
        return None


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or ``None``."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _versions() -> dict[str, str]:
    return {pkg: v for pkg in PACKAGES if (v := package_version(pkg)) is not None}


def _gpus() -> list[dict[str, str]]:
    out = _run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"])
    keys = ("name", "driver", "compute_capability")
    return [dict(zip(keys, (p.strip() for p in line.split(",")))) for line in (out or "").splitlines() if line.strip()]


def _jetson() -> dict[str, str]:
    model, l4t = _read(_DT_MODEL), _read(_L4T_RELEASE)
    if not l4t and not (model and "jetson" in model.lower()):
        return {}
    info = {"jetson_model": model or "NVIDIA Jetson"}
    if l4t:
        info["l4t"] = l4t.splitlines()[0].strip()
    if power := _run(["nvpmodel", "-q"]):
        info["power_mode"] = " ".join(power.split())
    return info


@lru_cache(maxsize=1)
def _fingerprint() -> dict[str, Any]:
    cpu_model, flags = _cpu()
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "logical_cores": psutil.cpu_count(logical=True) or 0,
        "physical_cores": psutil.cpu_count(logical=False) or 0,
        "isa_flags": flags,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": _versions(),
    }
    try:
        import onnxruntime

        info["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    except ImportError:
        pass
    if gpus := _gpus():
        info["gpus"] = gpus
    info.update(_jetson())
    return info


def device_fingerprint() -> dict[str, Any]:
    """What this machine is, for reports: JSON-serializable, computed once per process (a fresh copy each call)."""
    return copy.deepcopy(_fingerprint())


def int8_pair_sums_saturate() -> bool:
    """True on x86 CPUs without VNNI (AVX2, AVX-512F only): their uint8 x int8 kernels add product pairs in 16 bits,
    which overflow with full 8-bit weights; ONNX Runtime's and OpenVINO's documented fix is 7-bit weights."""
    device = device_fingerprint()
    x86 = str(device.get("machine", "")).lower() in ("x86_64", "amd64", "i686", "x86")
    return x86 and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(device.get("isa_flags", []))
