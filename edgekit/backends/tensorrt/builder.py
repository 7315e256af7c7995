"""TensorRT: the ONNX handed to TensorRT, its lint, build config and ``trtexec`` command; the engine when possible.

``int8`` is explicit quantization: the shared calibration ranges (the same cache as ORT's, computed once) placed
under ``TENSORRT_PLACEMENT`` (symmetric int8, zero-point 0, per-channel weights on the output axis, float bias),
linted against TensorRT's rules, built as a strongly typed network. ``fp16``/``fp32`` build from the FP32 ONNX.

Where neither the ``tensorrt`` module nor ``trtexec`` exists (no NVIDIA GPU), or ``tensorrt.build: never``, the
target is reported as not built; its ONNX, ``build_<precision>.json`` and trtexec command are still written, so
the same folder can be copied to a Jetson and built there.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.artifacts import sha256_file, write_json_atomic
from edgekit.backends.base import Built, Graph, Run, file_name
from edgekit.backends.tensorrt.engine import (
    TENSORRT_MISSING,
    DynamicBatch,
    TensorRTBuildConfig,
    build_engine,
    import_tensorrt,
    manifest_path,
    onnx_input_shapes,
    trtexec_command,
)
from edgekit.errors import EdgekitError
from edgekit.onnx_io import load_onnx, save_onnx
from edgekit.recipe import Recipe
from edgekit.targets import Target


def profile_dims(onnx_path: Path, input_sizes: dict[str, list[int]], batch_set: bool = False) -> dict[str, DynamicBatch]:
    """Ranges of the named dynamic axes (a text tower's ``sequence``; axis 0 too unless ``batch_set``: the recipe's
    ``export.dynamic_batch`` range covers it): 1 up to the size the graph was exported at (the full context length a
    device runs), optimised for it."""
    dims: dict[str, DynamicBatch] = {}
    for name, shape in onnx_input_shapes(onnx_path).items():
        example = input_sizes.get(name, [])
        for axis, d in enumerate(shape):
            if batch_set and axis == 0:
                continue
            if isinstance(d, str) and axis < len(example) and example[axis] > 0 and d not in dims:
                dims[d] = DynamicBatch(min=1, opt=example[axis], max=example[axis])
    return dims


def build_config(recipe: Recipe, precision: str, dims: dict[str, DynamicBatch] | None = None) -> TensorRTBuildConfig:
    """The engine build settings a recipe asks for (``dims``: ranges of named dynamic axes, see :func:`profile_dims`)."""
    t = recipe.tensorrt
    batch = DynamicBatch(min=1, opt=min(recipe.model.batch, t.max_batch), max=t.max_batch) if recipe.export.dynamic_batch else None
    return TensorRTBuildConfig(
        precision=precision,
        workspace_mb=t.workspace_mb,
        dynamic_batch=batch,
        dims=dims or {},
        timing_cache=Path(t.timing_cache) if t.timing_cache else None,
        dla_core=t.dla_core,
        gpu_fallback=t.dla_core is not None,
        builder_optimization_level=t.builder_optimization_level,
    )


def tensorrt_available() -> str | None:
    """How engines can be built here (``tensorrt-python`` or ``trtexec``), or ``None``."""
    try:
        import_tensorrt()
        return "tensorrt-python"
    except ImportError:
        return "trtexec" if shutil.which("trtexec") else None


def _own(graph: Graph, name: str) -> str:
    """``name`` for a single-graph family, ``<graph>_<name>`` for a tower (files without ``model`` in their name)."""
    return name if graph.single else f"{graph.name}_{name}"


def quantized_onnx(graph: Graph, out: Path, calibration: dict) -> tuple[Path, Path, list[str]]:
    """Write the TensorRT-placed Q/DQ ONNX (CNN or transformer placement, by graph kind) from the run's shared ranges;
    returns it, its spec file and its lint issues."""
    from edgekit.backends.tensorrt.qdq import lint_qdq_for_tensorrt
    from edgekit.quantization.placement import tensorrt_placement
    from edgekit.quantization.ptq import place

    float_nodes = list(graph.float_nodes)
    if "tensorrt" in graph.searched_float_nodes:  # its own search's choice replaces ONNX Runtime's
        ort = set(graph.searched_float_nodes.get("onnxruntime", []))
        float_nodes = [n for n in float_nodes if n not in ort] + graph.searched_float_nodes["tensorrt"]
    placement = tensorrt_placement(graph.kind)
    source = load_onnx(graph.trained_model or graph.ranges_model or graph.fp32)  # QAT's trained weights when it ran
    model, spec = place(source, placement, graph.trained_ranges or graph.ranges, float_nodes, graph.float_ops, calibration)
    if graph.trained_model is not None:
        spec.settings["qat"] = f"trained weights and activation scales from {graph.trained_model.name} (edgekit.qat.transfer)"
    save_onnx(model, out, {"precision": "int8", "placement": placement.name})
    spec_path = out.with_name(_own(graph, "quant_spec_tensorrt.json"))
    write_json_atomic(spec_path, spec.to_dict())
    return out, spec_path, [str(i) for i in lint_qdq_for_tensorrt(model)]


def graph_precision(graph: Graph, target: Target) -> tuple[str, str | None]:
    """What ``graph`` runs in within ``target``, and why when that is not the target's precision: an int8 target runs
    a tower fp16 where TensorRT's placement cannot quantize it from static ranges (kept float by the recipe, no
    calibration samples, no Linear layer), and a decoder fp16 (int8 LLM decoders are TensorRT-LLM's)."""
    if target.precision != "int8" or graph.kind == "cnn":
        return target.precision, None
    if graph.kind == "decoder":
        return "fp16", "edgekit places int8 on vision and text towers only; TensorRT-LLM builds int8 decoders"
    if graph.int8 == "float":
        return "fp16", "kept float by the recipe"
    if not graph.ranges:
        why = "no calibration samples" if graph.calibration is None else "no static calibration ranges (TensorRT has no dynamic int8)"
        return "fp16", why
    return "int8", None


def simulation(graph: Graph, precision: str, onnx_path: Path, folder: Path, threads: int) -> tuple[Callable[[], Any] | None, str | None, Path | None]:
    """(runner factory, how, file) measuring this graph's TensorRT accuracy on the CPU (edgekit.backends.tensorrt.simulate):
    the Q/DQ graph as written for int8, fp16 storage emulated for fp16; nothing for fp32."""
    from edgekit.backends.tensorrt.simulate import FP16_HOW, INT8_HOW, simulated_runner, write_fp16_emulation

    if precision == "int8":
        return (lambda: simulated_runner(onnx_path, threads)), INT8_HOW, onnx_path
    if precision == "fp16":
        sim = write_fp16_emulation(graph.fp32, folder / file_name(graph, "model_fp16_simulated.onnx"))
        return (lambda: simulated_runner(sim, threads)), FP16_HOW, sim
    return None, None, None


def build(graph: Graph, target: Target, run: Run) -> Built:
    from edgekit.backends.tensorrt.runner import TensorRTRunner

    folder = run.folder("tensorrt")
    precision, why = graph_precision(graph, target)
    notes = [f"{graph.name} graph runs {precision} in {target.name}: {why}"] if why else []
    settings: dict = {}
    files: list[Path] = []
    if precision == "int8":
        if not graph.ranges:
            return Built(None, precision, not_built=f"no shared calibration ranges for the {graph.name} graph")
        calibration = graph.ranges_settings or graph.quantized["int8"].calibration
        onnx_path, spec_path, issues = quantized_onnx(graph, folder / file_name(graph, "model_int8_qdq.onnx"), calibration)
        files += [onnx_path, spec_path]
        settings["lint"] = {"issues": issues, "passed": not issues}
        if issues:
            raise EdgekitError(f"the TensorRT Q/DQ model breaks {len(issues)} explicit-quantization rule(s), first: {issues[0]}", onnx_path, "report this: edgekit's TensorRT placement should always lint clean")
    else:
        onnx_path = folder / file_name(graph, "model_fp32.onnx")
        if not onnx_path.is_file():
            shutil.copyfile(graph.fp32, onnx_path)
        files.append(onnx_path)
    if graph.kind == "decoder":
        reason = "TensorRT-LLM builds LLM decoders (KV-cache kernels, a profile per context length): edgekit writes no engine plan for them"
    else:
        reason = plan_engine(graph, target, run, precision, onnx_path, settings, files)
        if reason is None:
            engine = folder / file_name(graph, f"model_{target.precision}.engine")
            build_engine(onnx_path, engine, TensorRTBuildConfig.parse(settings["config"]))
            files += [engine, manifest_path(engine)]
            settings["builder"] = tensorrt_available()
            simulate, how, sim = simulation(graph, precision, onnx_path, folder, run.recipe.benchmark.threads)  # reported beside the engine
            files += [sim] if sim is not None and sim != onnx_path else []
            return Built(engine, precision, lambda: TensorRTRunner(engine), files, settings, notes=notes, simulate=simulate, simulated_how=how)
        reason += "; build it on the device from the output folder with the trtexec command below"
    simulate, how, sim = simulation(graph, precision, onnx_path, folder, run.recipe.benchmark.threads)  # accuracy without the engine
    if sim is not None:
        files += [sim] if sim != onnx_path else []
        settings["simulated_with"] = str(Path("tensorrt") / sim.name)
    return Built(onnx_path, precision, None, files, settings, not_built=reason, notes=notes, simulate=simulate, simulated_how=how)


def plan_engine(graph: Graph, target: Target, run: Run, precision: str, onnx_path: Path, settings: dict, files: list[Path]) -> str | None:
    """Write ``<graph>_build_<target precision>.json`` (config, trtexec command, ONNX digest) into ``settings`` and
    ``files``; returns why the engine cannot be built here, or None when it can."""
    folder = onnx_path.parent
    config = build_config(run.recipe, precision, profile_dims(onnx_path, graph.input_sizes, run.recipe.export.dynamic_batch))
    engine = folder / file_name(graph, f"model_{target.precision}.engine")  # named by the target: a tower may run fp16 in int8
    rel_onnx, rel_engine = Path("tensorrt") / onnx_path.name, Path("tensorrt") / engine.name  # run from the output folder
    command = trtexec_command(rel_onnx, rel_engine, config, onnx_input_shapes(onnx_path))
    settings.update(config=config.model_dump(mode="json"), trtexec=shlex.join(command), onnx_sha256=sha256_file(onnx_path))
    plan = folder / _own(graph, f"build_{target.precision}.json")
    write_json_atomic(plan, {"target": target.name, "onnx": str(rel_onnx), "engine": str(rel_engine), **settings})
    files.append(plan)
    if run.recipe.tensorrt.build == "never":
        return "tensorrt.build is 'never'"
    return None if tensorrt_available() else TENSORRT_MISSING


def build_from_run(run_dir: str | Path, precision: str | None = None) -> list[Path]:
    """Build the TensorRT engines a run folder describes (``tensorrt/build_<precision>.json``), with their manifests.

    This is the device half of the x86 -> Jetson flow: ``edgekit export`` writes the Q/DQ ONNX and build settings
    anywhere; the engine is built on the device that will run it.
    """
    import json

    run_dir = Path(run_dir)
    plans = sorted((run_dir / "tensorrt").glob("*build_*.json"))  # build_<precision>.json, or <tower>_build_<precision>.json
    if precision:
        plans = [p for p in plans if p.stem == f"build_{precision}" or p.stem.endswith(f"_build_{precision}")]
    if not plans:
        raise EdgekitError(
            "no TensorRT build settings in this run folder" + (f" for precision {precision}" if precision else ""),
            run_dir / "tensorrt",
            "run `edgekit export` with a tensorrt:<precision> target first, and pass its --out folder",
        )
    engines = []
    for plan_path in plans:
        try:
            plan = json.loads(plan_path.read_text(encoding="utf-8"))
            onnx_rel, engine_rel, config = plan["onnx"], plan["engine"], plan["config"]
        except (ValueError, KeyError) as exc:
            raise EdgekitError(f"not an edgekit TensorRT build file ({exc})", plan_path, "re-run `edgekit export`") from exc
        onnx_path = run_dir / onnx_rel
        if plan.get("onnx_sha256") and onnx_path.is_file() and sha256_file(onnx_path) != plan["onnx_sha256"]:
            raise EdgekitError("the ONNX model changed since `edgekit export` wrote its build settings", onnx_path, "re-run `edgekit export`")
        engines.append(build_engine(onnx_path, run_dir / engine_rel, config))
    return engines
