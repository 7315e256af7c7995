"""Build TensorRT engines from (Q/DQ) ONNX and pin each engine to the device and software that built it.

An engine (``.plan``/``.engine``) only runs on the TensorRT version and GPU architecture that built it, so every
engine gets a sidecar manifest ``<engine>.json``: TensorRT and CUDA versions, GPU name and compute capability,
JetPack/L4T when present, the input ONNX's SHA-256, the build config, the equivalent ``trtexec`` command and the
engine's own SHA-256. ``check_engine_manifest`` refuses an engine whose manifest does not match the device.

Precision (TensorRT 10/11):

* ``int8``: a strongly typed network built from a Q/DQ ONNX (``edgekit.backends.tensorrt.qdq``). Strong typing
  takes every type from the graph, so precision flags are not allowed with it; the float parts run in the
  ONNX's float type (convert them to fp16 beforehand, e.g. with ModelOpt AutoCast, to run them in fp16).
* ``fp16``: TensorRT 10's weakly typed ``--fp16``/``BuilderFlag.FP16``; TensorRT 11 removed that flag, so there
  set ``strongly_typed: true`` and pass an fp16 ONNX.
* ``fp32``: no precision flag.

Nothing here imports ``tensorrt`` at module import time: configs, commands and manifests work on any machine.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekit.artifacts import atomic_path, sha256_file, write_bytes_atomic, write_json_atomic
from edgekit.errors import EdgekitError

MANIFEST_SCHEMA = "edgekit.tensorrt-engine/1"
TENSORRT_MISSING = (
    "TensorRT is not installed: building or running engines needs an NVIDIA GPU (or Jetson) with the TensorRT "
    "Python package (`import tensorrt`) or `trtexec` on PATH"
)
TENSORRT_FIX = "install TensorRT 10/11 on the target device (JetPack on Jetson, `pip install tensorrt` on x86 with CUDA)"


def import_tensorrt():
    """NVIDIA's ``tensorrt`` module, or ImportError. A plain folder named ``tensorrt`` on ``sys.path`` (an edgekit run
    folder's ``tensorrt/`` when Python starts there) imports as an empty namespace package: that is not TensorRT."""
    import tensorrt

    if getattr(tensorrt, "__file__", None) is None and hasattr(tensorrt, "__path__"):  # a namespace package
        raise ImportError("'tensorrt' resolves to a folder, not NVIDIA TensorRT")
    return tensorrt


class DynamicBatch(BaseModel):
    """A (min, opt, max) range of one dynamic axis in the optimization profile: the batch, or a named axis (``dims``)."""

    model_config = ConfigDict(extra="forbid")

    min: int = Field(1, ge=1)
    opt: int = Field(1, ge=1)
    max: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> DynamicBatch:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"dynamic batch needs min <= opt <= max, got {self.min}/{self.opt}/{self.max}")
        return self


class TensorRTBuildConfig(BaseModel):
    """How to build one engine. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    strongly_typed: bool | None = None  # None: True for int8 (Q/DQ), False otherwise
    workspace_mb: int = Field(1024, ge=1)
    dynamic_batch: DynamicBatch | None = None
    dims: dict[str, DynamicBatch] = Field(default_factory=dict)  # other dynamic axes by ONNX dim name (a text tower's "sequence")
    timing_cache: Path | None = None
    dla_core: int | None = Field(None, ge=0)
    gpu_fallback: bool = False
    builder_optimization_level: int | None = Field(None, ge=0, le=5)

    @model_validator(mode="after")
    def _consistent(self) -> TensorRTBuildConfig:
        if self.precision == "int8" and self.strongly_typed is False:
            raise ValueError(
                "precision int8 builds a strongly typed network from the Q/DQ ONNX; calibrator-based (weakly typed) "
                "INT8 was removed in TensorRT 11: drop strongly_typed: false"
            )
        if self.gpu_fallback and self.dla_core is None:
            raise ValueError("gpu_fallback only applies to DLA builds: set dla_core too")
        if self.dla_core is not None and self.precision == "fp32":
            raise ValueError("DLA runs fp16 or int8 only: use precision fp16 or int8 with dla_core")
        return self

    @property
    def needs_profile(self) -> bool:
        return self.dynamic_batch is not None or bool(self.dims)

    @property
    def is_strongly_typed(self) -> bool:
        return self.strongly_typed if self.strongly_typed is not None else self.precision == "int8"

    @classmethod
    def parse(cls, data: dict[str, Any] | TensorRTBuildConfig | None, source: str | Path | None = None) -> TensorRTBuildConfig:
        """Validate ``data``, turning pydantic's errors into one EdgekitError line naming the key."""
        if isinstance(data, cls):
            return data
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "tensorrt"
            raise EdgekitError(f"invalid TensorRT build setting {key!r}: {err['msg']}", source, "see the TensorRT build settings in the README") from None


# -------------------------------------------------------------------------------------------------------- trtexec


def onnx_input_shapes(onnx_path: str | Path) -> dict[str, list[int | str]]:
    """Graph inputs (not initializers) and their dims (int, or the symbolic name / '?' when dynamic)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = dims
    return shapes


def profile_shapes(input_shapes: dict[str, list[int | str]], batch: DynamicBatch | None,
                   dims: dict[str, DynamicBatch] | None = None) -> dict[str, tuple[list[int], list[int], list[int]]]:
    """(min, opt, max) shape of every input: the batch range on axis 0, a named axis's range from ``dims``, the
    exported size elsewhere."""
    dims = dims or {}
    out = {}
    for name, shape in input_shapes.items():
        lo, opt, hi = [], [], []
        for axis, d in enumerate(shape):
            rng = batch if axis == 0 and batch is not None else dims.get(d) if isinstance(d, str) else None  # the batch range wins
            if rng is None and not (isinstance(d, int) and d > 0):
                raise EdgekitError(
                    f"input {name!r} has shape {shape}: axis {axis} ({d}) is dynamic and has no range for a TensorRT profile",
                    fix="export with a fixed input size (model.input_size) and export.dynamic_batch: true",
                )
            for part, value in zip((lo, opt, hi), (rng.min, rng.opt, rng.max) if rng is not None else (d, d, d)):
                part.append(int(value))
        out[name] = (lo, opt, hi)
    return out


def _shape_arg(shapes: dict[str, tuple[list[int], list[int], list[int]]], which: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims[which])}" for name, dims in shapes.items())


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    config: TensorRTBuildConfig | dict,
    input_shapes: dict[str, list[int | str]] | None = None,
    trtexec: str = "trtexec",
) -> list[str]:
    """The ``trtexec`` argument list that builds ``engine_path`` from ``onnx_path`` as ``config`` says (no inference).

    ``input_shapes`` (input name -> dims) is read from the ONNX file when a dynamic batch needs it and it is not given.
    """
    config = TensorRTBuildConfig.parse(config)
    cmd = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--skipInference"]
    if config.is_strongly_typed:
        cmd.append("--stronglyTyped")  # types come from the graph: no precision flags allowed
    elif config.precision == "fp16":
        cmd.append("--fp16")
    cmd.append(f"--memPoolSize=workspace:{config.workspace_mb}M")
    if config.needs_profile:
        shapes = profile_shapes(input_shapes if input_shapes is not None else onnx_input_shapes(onnx_path), config.dynamic_batch, config.dims)
        cmd += [f"--minShapes={_shape_arg(shapes, 0)}", f"--optShapes={_shape_arg(shapes, 1)}", f"--maxShapes={_shape_arg(shapes, 2)}"]
    if config.timing_cache is not None:
        cmd.append(f"--timingCacheFile={config.timing_cache}")
    if config.dla_core is not None:
        cmd.append(f"--useDLACore={config.dla_core}")
        if config.gpu_fallback:
            cmd.append("--allowGPUFallback")
    if config.builder_optimization_level is not None:
        cmd.append(f"--builderOptimizationLevel={config.builder_optimization_level}")
    return cmd


# ----------------------------------------------------------------------------------------------------- device info


def import_cudart():
    """cuda-python's runtime module (``cuda.bindings.runtime`` in cuda-python >= 12.6, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # type: ignore[no-redef]
    return cudart


def _cuda_info() -> dict[str, str]:
    """CUDA runtime version and GPU 0's name and compute capability, from cuda-python when it is installed."""
    try:
        cudart = import_cudart()
        err, version = cudart.cudaRuntimeGetVersion()
        info = {}
        if int(err) == 0:
            info["cuda_version"] = f"{version // 1000}.{(version % 1000) // 10}"
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name
            info["gpu_name"] = (name.decode(errors="ignore") if isinstance(name, bytes) else str(name)).strip("\x00 ")
            info["compute_capability"] = f"{props.major}.{props.minor}"
        return info
    except Exception:  # no cuda-python, no driver, no GPU: the caller falls back to nvidia-smi
        return {}


def _jetpack_version() -> str | None:
    if not shutil.which("dpkg-query"):
        return None
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def current_device_info(tensorrt_version: str | None = None) -> dict[str, Any]:
    """This machine as an engine sees it: TensorRT/CUDA versions, GPU name and compute capability, JetPack/L4T."""
    from edgekit.profiling.device import device_fingerprint

    fp = device_fingerprint()
    info: dict[str, Any] = {"tensorrt_version": tensorrt_version or fp.get("versions", {}).get("tensorrt")}
    if info["tensorrt_version"] is None:
        try:
            info["tensorrt_version"] = import_tensorrt().__version__
        except ImportError:
            pass
    info.update({"cuda_version": None, "gpu_name": None, "compute_capability": None})
    info.update(_cuda_info())
    gpus = fp.get("gpus") or []
    if gpus:
        info["gpu_name"] = info["gpu_name"] or gpus[0].get("name")
        info["compute_capability"] = info["compute_capability"] or gpus[0].get("compute_capability")
    if fp.get("l4t"):
        info["l4t"] = fp["l4t"]
        info["jetson_model"] = fp.get("jetson_model")
        info["jetpack"] = _jetpack_version()
    return info


# -------------------------------------------------------------------------------------------------------- manifest


def manifest_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_engine_manifest(
    engine_path: str | Path,
    onnx_path: str | Path,
    config: TensorRTBuildConfig,
    device_info: dict[str, Any],
    builder: str,
    command: list[str],
) -> Path:
    """Write ``<engine>.json`` beside an existing engine file (atomically)."""
    engine_path = Path(engine_path)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "engine": engine_path.name,
        "engine_sha256": sha256_file(engine_path),
        "engine_bytes": engine_path.stat().st_size,
        "tensorrt_version": device_info.get("tensorrt_version"),
        "cuda_version": device_info.get("cuda_version"),
        "gpu_name": device_info.get("gpu_name"),
        "compute_capability": device_info.get("compute_capability"),
        "jetpack": device_info.get("jetpack"),
        "l4t": device_info.get("l4t"),
        "onnx": Path(onnx_path).name,
        "onnx_sha256": sha256_file(onnx_path),
        "config": config.model_dump(mode="json"),
        "strongly_typed": config.is_strongly_typed,
        "builder": builder,
        "trtexec_command": command,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return write_json_atomic(manifest_path(engine_path), manifest)


def read_engine_manifest(engine_path: str | Path) -> dict[str, Any]:
    path = manifest_path(engine_path)
    if not path.is_file():
        raise EdgekitError(
            f"engine manifest {path.name} is missing, so the engine's TensorRT version and GPU are unknown",
            engine_path,
            "rebuild the engine with `build_engine` (it writes the manifest) on the target device",
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgekitError(f"engine manifest is not valid JSON ({exc})", path, "rebuild the engine") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise EdgekitError(f"not an edgekit TensorRT engine manifest (schema {MANIFEST_SCHEMA} expected)", path, "rebuild the engine")
    return manifest


def _device_value(device_info: dict[str, Any], key: str) -> Any:
    if device_info.get(key) is not None:
        return device_info[key]
    if key == "tensorrt_version":  # a device_fingerprint() dict
        return (device_info.get("versions") or {}).get("tensorrt")
    if key == "compute_capability" and device_info.get("gpus"):
        return device_info["gpus"][0].get("compute_capability")
    return None


def check_engine_manifest(engine_path: str | Path, device_info: dict[str, Any]) -> None:
    """Raise EdgekitError unless ``engine_path`` is unchanged since its build and was built for this device.

    ``device_info``: ``current_device_info()``, or a ``device_fingerprint()`` dict (``versions.tensorrt``,
    ``gpus[0].compute_capability``).
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise EdgekitError("TensorRT engine not found", engine_path, "check the path or build the engine first")
    manifest = read_engine_manifest(engine_path)
    rebuild = "rebuild the engine on this device (engines are tied to one TensorRT version and GPU architecture)"
    if sha256_file(engine_path) != manifest.get("engine_sha256"):
        raise EdgekitError(
            f"engine bytes changed since the build (SHA-256 differs from {manifest_path(engine_path).name})",
            engine_path,
            "the file is corrupt or was replaced: rebuild it, or restore the engine that matches its manifest",
        )
    have = _device_value(device_info, "tensorrt_version")
    want = manifest.get("tensorrt_version")
    if have is None:
        raise EdgekitError(f"engine was built with TensorRT {want}, and TensorRT is not installed here", engine_path, TENSORRT_FIX)
    if str(have) != str(want):
        raise EdgekitError(f"engine was built with TensorRT {want}, this device has TensorRT {have}", engine_path, rebuild)
    have_cc = _device_value(device_info, "compute_capability")
    want_cc = manifest.get("compute_capability")
    if want_cc is not None and str(have_cc) != str(want_cc):
        gpu = manifest.get("gpu_name") or "a GPU"
        raise EdgekitError(
            f"engine was built for {gpu} (compute capability {want_cc}), this device's GPU has compute capability {have_cc}",
            engine_path,
            rebuild,
        )


# ----------------------------------------------------------------------------------------------------------- build


def _tensorrt_version_from_trtexec(output: str) -> str | None:
    """``[TensorRT v100300]`` in trtexec's banner -> ``10.3.0``."""
    import re

    match = re.search(r"TensorRT v(\d{5,})", output)
    if not match:
        return None
    n = int(match.group(1))
    return f"{n // 10000}.{(n // 100) % 100}.{n % 100}"


def _build_with_python_api(trt, onnx_path: Path, config: TensorRTBuildConfig, input_shapes) -> bytes:
    """Build a serialized engine with TensorRT's Python API (10.x/11.x)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if config.is_strongly_typed:  # required for Q/DQ INT8 on 10.x; accepted (always on) in 11.x
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgekitError(f"TensorRT cannot parse this ONNX model ({errors[:300]})", onnx_path, "run `lint_qdq_for_tensorrt` on it and check the operator support")
    build_config = builder.create_builder_config()
    build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    if config.precision == "fp16" and not config.is_strongly_typed:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise EdgekitError(
                f"TensorRT {trt.__version__} removed weakly typed fp16 (BuilderFlag.FP16)",
                onnx_path,
                "convert the ONNX to fp16 (ModelOpt AutoCast) and set strongly_typed: true",
            )
        build_config.set_flag(trt.BuilderFlag.FP16)
    if config.dla_core is not None:
        build_config.default_device_type = trt.DeviceType.DLA
        build_config.DLA_core = config.dla_core
        if config.gpu_fallback:
            build_config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if config.builder_optimization_level is not None:
        build_config.builder_optimization_level = config.builder_optimization_level
    if config.needs_profile:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes(input_shapes, config.dynamic_batch, config.dims).items():
            profile.set_shape(name, lo, opt, hi)
        build_config.add_optimization_profile(profile)
    cache = None
    if config.timing_cache is not None:
        data = Path(config.timing_cache).read_bytes() if Path(config.timing_cache).is_file() else b""
        cache = build_config.create_timing_cache(data)
        build_config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, build_config)
    if plan is None:
        raise EdgekitError("TensorRT failed to build the engine (see the TensorRT log above)", onnx_path, "check the log; lower builder_optimization_level or raise workspace_mb")
    if cache is not None:
        write_bytes_atomic(config.timing_cache, bytes(cache.serialize()))
    return bytes(plan)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    config: TensorRTBuildConfig | dict | None = None,
    input_shapes: dict[str, list[int | str]] | None = None,
) -> Path:
    """Build ``engine_path`` (the raw serialized plan, written atomically) and its manifest ``<engine>.json``.

    Uses the TensorRT Python API when ``tensorrt`` imports, else ``trtexec`` from PATH; raises EdgekitError when
    neither exists (any machine without an NVIDIA GPU stack).
    """
    config = TensorRTBuildConfig.parse(config)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise EdgekitError("ONNX model not found", onnx_path, "check the path or run `edgekit export` first")
    if config.needs_profile and input_shapes is None:
        input_shapes = onnx_input_shapes(onnx_path)
    command = trtexec_command(onnx_path, engine_path, config, input_shapes)
    try:
        trt = import_tensorrt()
    except ImportError:
        trt = None
    if trt is not None:
        plan = _build_with_python_api(trt, onnx_path, config, input_shapes)
        write_bytes_atomic(engine_path, plan)
        device = current_device_info(trt.__version__)
        builder = "tensorrt-python"
    elif (exe := shutil.which("trtexec")) is not None:
        with atomic_path(engine_path) as tmp:
            run_cmd = trtexec_command(onnx_path, tmp, config, input_shapes, trtexec=exe)
            result = subprocess.run(run_cmd, capture_output=True, text=True)
            if result.returncode != 0 or not tmp.stat().st_size:
                tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
                raise EdgekitError(f"trtexec failed with exit code {result.returncode} ({tail[:300]})", onnx_path, f"run it by hand: {' '.join(command)}")
        device = current_device_info(_tensorrt_version_from_trtexec(result.stdout + result.stderr))
        builder = "trtexec"
    else:
        raise EdgekitError(TENSORRT_MISSING, engine_path, TENSORRT_FIX)
    write_engine_manifest(engine_path, onnx_path, config, device, builder, command)
    return engine_path


__all__ = [
    "DynamicBatch",
    "TensorRTBuildConfig",
    "build_engine",
    "check_engine_manifest",
    "current_device_info",
    "manifest_path",
    "read_engine_manifest",
    "trtexec_command",
    "write_engine_manifest",
]
