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
from pathlib import Path

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


def build_config(recipe: Recipe, precision: str) -> TensorRTBuildConfig:
    """The engine build settings a recipe asks for."""
    t = recipe.tensorrt
    batch = DynamicBatch(min=1, opt=min(recipe.model.batch, t.max_batch), max=t.max_batch) if recipe.export.dynamic_batch else None
    return TensorRTBuildConfig(
        precision=precision,
        workspace_mb=t.workspace_mb,
        dynamic_batch=batch,
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


def quantized_onnx(graph: Graph, out: Path, calibration: dict) -> tuple[Path, list[str]]:
    """Write the TensorRT-placed Q/DQ ONNX from the run's shared ranges and return it with its lint issues."""
    from edgekit.backends.tensorrt.qdq import lint_qdq_for_tensorrt
    from edgekit.quantization.placement import TENSORRT_PLACEMENT
    from edgekit.quantization.ptq import place

    float_nodes = list(graph.float_nodes)
    if "tensorrt" in graph.searched_float_nodes:  # its own search's choice replaces ONNX Runtime's
        ort = set(graph.searched_float_nodes.get("onnxruntime", []))
        float_nodes = [n for n in float_nodes if n not in ort] + graph.searched_float_nodes["tensorrt"]
    model, spec = place(load_onnx(graph.fp32), TENSORRT_PLACEMENT, graph.ranges, float_nodes, graph.float_ops, calibration)
    save_onnx(model, out, {"precision": "int8", "placement": "tensorrt"})
    write_json_atomic(out.with_name("quant_spec_tensorrt.json"), spec.to_dict())
    return out, [str(i) for i in lint_qdq_for_tensorrt(model)]


def build(graph: Graph, target: Target, run: Run) -> Built:
    from edgekit.backends.tensorrt.runner import TensorRTRunner

    if graph.kind != "cnn":
        return Built(None, target.precision, not_built=f"TensorRT engines for {graph.kind} graphs are not built by edgekit yet")
    folder = run.folder("tensorrt")
    precision = target.precision
    settings: dict = {}
    files: list[Path] = []
    if precision == "int8":
        form = graph.quantized.get("int8")
        if not graph.ranges or form is None:
            return Built(None, precision, not_built=f"no shared calibration ranges for the {graph.name} graph")
        onnx_path, issues = quantized_onnx(graph, folder / file_name(graph, "model_int8_qdq.onnx"), form.calibration)
        files += [onnx_path, folder / "quant_spec_tensorrt.json"]
        settings["lint"] = {"issues": issues, "passed": not issues}
        if issues:
            raise EdgekitError(f"the TensorRT Q/DQ model breaks {len(issues)} explicit-quantization rule(s), first: {issues[0]}", onnx_path, "report this: edgekit's TensorRT placement should always lint clean")
    else:
        onnx_path = folder / file_name(graph, "model_fp32.onnx")
        if not onnx_path.is_file():
            shutil.copyfile(graph.fp32, onnx_path)
        files.append(onnx_path)
    config = build_config(run.recipe, precision)
    engine = folder / file_name(graph, f"model_{precision}.engine")
    rel_onnx, rel_engine = Path("tensorrt") / onnx_path.name, Path("tensorrt") / engine.name  # run from the output folder
    command = trtexec_command(rel_onnx, rel_engine, config, onnx_input_shapes(onnx_path))
    settings.update(config=config.model_dump(mode="json"), trtexec=shlex.join(command), onnx_sha256=sha256_file(onnx_path))
    plan = folder / file_name(graph, f"build_{precision}.json")
    write_json_atomic(plan, {"target": target.name, "onnx": str(rel_onnx), "engine": str(rel_engine), **settings})
    files.append(plan)
    how = tensorrt_available()
    reason = "tensorrt.build is 'never'" if run.recipe.tensorrt.build == "never" else None if how else TENSORRT_MISSING
    if reason:
        simulate, how = None, None
        if precision in ("int8", "fp16"):  # accuracy without the engine (edgekit.backends.tensorrt.simulate)
            from edgekit.backends.tensorrt.simulate import FP16_HOW, INT8_HOW, simulated_runner, write_fp16_emulation

            sim = onnx_path if precision == "int8" else write_fp16_emulation(graph.fp32, folder / file_name(graph, "model_fp16_simulated.onnx"))
            if sim != onnx_path:
                files.append(sim)
            threads = run.recipe.benchmark.threads
            simulate, how = (lambda path=sim: simulated_runner(path, threads)), INT8_HOW if precision == "int8" else FP16_HOW
            settings["simulated_with"] = str(Path("tensorrt") / sim.name)
        return Built(onnx_path, precision, None, files, settings, not_built=f"{reason}; build it on the device from the output folder with the trtexec command below",
                     simulate=simulate, simulated_how=how)
    build_engine(onnx_path, engine, config)
    files += [engine, manifest_path(engine)]
    settings["builder"] = how
    return Built(engine, precision, lambda: TensorRTRunner(engine), files, settings)


def build_from_run(run_dir: str | Path, precision: str | None = None) -> list[Path]:
    """Build the TensorRT engines a run folder describes (``tensorrt/build_<precision>.json``), with their manifests.

    This is the device half of the x86 -> Jetson flow: ``edgekit export`` writes the Q/DQ ONNX and build settings
    anywhere; the engine is built on the device that will run it.
    """
    import json

    run_dir = Path(run_dir)
    plans = sorted((run_dir / "tensorrt").glob("build_*.json"))
    if precision:
        plans = [p for p in plans if p.stem == f"build_{precision}"]
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
