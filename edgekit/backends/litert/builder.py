"""TFLite / LiteRT: PyTorch -> ``.tflite`` with litert-torch (no TensorFlow), quantized with ai-edge-quantizer.

* Layout: the model is wrapped to take NHWC input (LiteRT's native layout); the runner transposes the contract's
  NCHW feed, so evaluators see the same interface as every other backend.
* Outputs: the detector's single (boxes | scores) tensor is split into two outputs, ``boxes`` (pixels) and
  ``scores`` (probabilities), so they never share one quantization scale.
* Precisions: ``fp32``; ``fp16`` (fp16 weights, float compute); ``dynamic`` (int8 weights, activations quantized
  at run time); ``int8`` (full integer: int8 weights and activations, ranges calibrated on the recipe's
  calibration images, the family's decode kept float as in the shared spec).

Ranges (``tflite.ranges``): ``litert`` (default) keeps ai-edge-quantizer's own calibration on the recipe's images, a
moving average of per-image min/max; ``shared`` replaces the range of every tensor that matches a tensor of the
run's shared calibration (``edgekit.backends.litert.ranges``), so LiteRT uses the same ranges as ORT and TensorRT.
On YOLOv5n (158 COCO images) ``litert`` measured -0.45 pt mAP50-95 and ``shared`` (percentile 99.99) -0.85 pt, so
``litert`` is the default. The manifest records which was used and how many tensors matched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.artifacts import atomic_path, sha256_file
from edgekit.backends.base import Built, Graph, Run, file_name
from edgekit.errors import EdgekitError
from edgekit.profiling.device import package_version
from edgekit.targets import Target

SIGNATURE = "serving_default"


def require(module: str):
    from edgekit.optional import require as require_extra

    return require_extra(module, "tflite", "tflite targets")


def quantize(fp32_path: Path, out_path: Path, precision: str, graph: Graph | None = None, run: Run | None = None) -> dict:
    """Quantize ``fp32_path`` with ai-edge-quantizer into ``out_path`` (``fp16``, ``dynamic``, or full ``int8``
    calibrated on the graph's feeds with its float patterns kept float); returns the settings for the manifest."""
    require("ai_edge_quantizer")
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    op = qtyping.TFLOperationName.ALL_SUPPORTED
    q = quantizer.Quantizer(str(fp32_path))
    settings: dict = {"tool": "ai-edge-quantizer", "version": package_version("ai-edge-quantizer")}
    calibration = None
    if precision == "fp16":
        config = qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True,
        )
        q.update_quantization_recipe(".*", op, config, AlgorithmName.FLOAT_CASTING)
        settings["recipe"] = "fp16 weights, float compute"
    elif precision == "dynamic":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        settings["recipe"] = "dynamic_wi8_afp32: int8 per-channel weights, activations quantized at run time"
    elif precision == "int8":
        kept = float_regexes(fp32_path, graph, run.recipe)
        q = int8_quantizer(fp32_path, kept)
        feeds = calibration_feeds(fp32_path, graph, run, f"calibrate tflite:int8{'' if graph.single else ' ' + graph.name}")
        with quiet_unless_interactive():  # ai-edge-quantizer's own tqdm bars flood non-interactive logs
            calibration = q.calibrate({SIGNATURE: feeds}, num_threads=run.threads)
        shared = 0
        trained = qat_ranges(graph, run.recipe)
        if (trained or run.recipe.tflite.ranges == "shared") and graph.ranges:
            from edgekit.backends.litert.ranges import apply_shared_ranges, match_tensors
            from edgekit.onnx_io import load_onnx

            # the ranges of the tensors the shared spec quantizes, not those it only observed (head conv outputs that
            # feed the float decode: a clipped range there would clip box logits)
            source = graph.trained_ranges if trained else graph.ranges
            ranges = {t: rng for t, rng in source.items() if t in graph.spec_tensors}
            onnx_model = load_onnx(graph.trained_model if trained else graph.fp32)
            matches = match_tensors(fp32_path, onnx_model, sorted(ranges), graph.calibration[0])
            shared = apply_shared_ranges(calibration, matches, ranges)
        method = "QAT-trained" if trained else run.recipe.quantization.method if run.recipe.quantization else "minmax"
        settings.update(
            recipe="static_wi8_ai8: int8 per-channel symmetric weights, int8 asymmetric activations",
            calibration={
                "images": len(feeds),
                "shared_ranges": shared,
                "activation_tensors": len(calibration),
                "method": (
                    f"shared {method} ranges (matched by value to the ONNX tensors) for {shared} tensors, ai-edge-quantizer's moving-average MinMax for the rest"
                    if shared else "ai-edge-quantizer's moving-average MinMax over the calibration images (tflite.ranges: litert)"
                ),
            },
            float_regex=kept,
            searched_float_nodes=list(graph.searched_float_nodes.get("tflite", [])),
        )
    else:
        raise EdgekitError(f"tflite has no precision {precision!r}", fix="use fp32, fp16, dynamic or int8")
    with quiet_unless_interactive():
        result = q.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(bytes(result.quantized_model))
    settings["quantization_recipe"] = result.recipe
    return settings


def qat_ranges(graph: Graph, recipe) -> bool:
    """Whether int8 takes QAT's trained activation ranges (``tflite.qat_ranges: trained`` after QAT ran)."""
    return graph.trained_model is not None and recipe.tflite.qat_ranges == "trained"


def trained_source(graph: Graph):
    """``graph.torch`` with QAT's trained weights written into a copy of its module (``edgekit.qat.transfer``);
    returns it and ``{"parameters": set, "trained_initializers": changed by training}``."""
    import dataclasses

    from edgekit.onnx_io import load_onnx
    from edgekit.qat.transfer import trained_module

    module, count, changed = trained_module(graph.torch.module, load_onnx(graph.fp32), load_onnx(graph.trained_model))
    if count == 0:
        raise EdgekitError(f"QAT's trained weights match no parameter of the {graph.name} graph's PyTorch module",
                           fix="report this: the ONNX graph's weights no longer equal the module's (a pass changed them)")
    return dataclasses.replace(graph.torch, module=module), {"parameters": count, "trained_initializers": changed}


def int8_quantizer(fp32_path: Path, float_regexes: list[str]):
    """ai-edge-quantizer's full-integer recipe (int8 per-channel weights, int8 activations) with the ops whose scope
    matches ``float_regexes`` left float."""
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    op = qtyping.TFLOperationName.ALL_SUPPORTED
    q = quantizer.Quantizer(str(fp32_path))
    q.add_static_config(regex=".*", operation_name=op, activation_num_bits=8, weight_num_bits=8)
    for regex in float_regexes:
        q.update_quantization_recipe(regex, op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    return q


def float_regexes(fp32_path: Path, graph: Graph, recipe, extra_nodes: list[str] | None = None) -> list[str]:
    """The scopes int8 keeps float: the family's patterns, then the ONNX nodes of ``quantization.keep_float.nodes``,
    of this backend's own search (``Graph.searched_float_nodes``) and ``extra_nodes``, mapped onto the ``.tflite``
    ops of the same modules (:mod:`edgekit.backends.litert.scope`)."""
    from edgekit.backends.litert.scope import scope_prefix, scope_regexes
    from edgekit.onnx_io import load_onnx

    q = recipe.quantization
    nodes = [*(q.keep_float.nodes if q else []), *graph.searched_float_nodes.get("tflite", []), *(extra_nodes or [])]
    mapped = scope_regexes(load_onnx(graph.fp32), nodes, scope_prefix(fp32_path)) if nodes else []
    return [*graph.torch.float_patterns, *mapped]


def quiet_unless_interactive():
    import contextlib
    import io

    from edgekit import progress

    if progress.enabled():
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def calibration_feeds(fp32_path: Path, graph: Graph, run: Run, label: str) -> list[dict[str, np.ndarray]]:
    """The graph's calibration feeds in the ``.tflite`` signature's names and layout: NHWC for the inputs the
    module takes channels-last, one row per feed when the converted graph has batch 1."""
    torch_source = graph.torch
    names = _signature_inputs(fp32_path)
    rename = dict(zip(torch_source.input_names, names)) if sorted(names) != sorted(torch_source.input_names) else {}
    feeds = []
    for i in run.progress(label, len(graph.calibration)):
        feed = graph.calibration[i]
        rows = [{k: v[j : j + 1] for k, v in feed.items()} for j in range(len(next(iter(feed.values()))))] if torch_source.fixed_batch else [feed]
        for row in rows:
            out = {}
            for name, x in row.items():
                x = np.asarray(x)
                if name in torch_source.channels_last:
                    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.float32)
                out[rename.get(name, name)] = x
            feeds.append(out)
    return feeds


def _signature_inputs(fp32_path: Path) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(fp32_path))
    return list(runner.get_signature_runner(SIGNATURE).get_input_details())


def convert(graph: Graph, out_path: Path, batch: int, source=None) -> dict:
    """The FP32 ``.tflite`` of the graph's PyTorch module, or of ``source`` (a :class:`TorchSource`; kept when it
    exists); returns the converter settings."""
    import torch

    source = source or graph.torch
    if not out_path.is_file():
        litert_torch = require("litert_torch")
        module = litert_torch.to_channel_last_io(source.module, args=[0]).eval() if source.wrap_channels_last else source.module
        with torch.no_grad(), quiet_unless_interactive():
            if source.wrap_channels_last:  # positional NHWC sample, as litert-torch's channel-last wrapper takes it
                edge_model = litert_torch.convert(module, tuple(source.sample.values()))
            else:
                edge_model = litert_torch.convert(module, sample_kwargs=source.sample)
        with atomic_path(out_path) as tmp, quiet_unless_interactive():
            edge_model.export(str(tmp))
    return {
        "tool": "litert-torch",
        "version": package_version("litert-torch"),
        "layout": "NHWC" if source.channels_last else "as the contract",
        "input_shapes": {n: list(x.shape) for n, x in source.sample.items()},
        "outputs": list(source.output_names),
        "batch": "static 1 (the runner feeds batches row by row)" if source.fixed_batch else batch,
    }


def _mode(graph: Graph, target: Target) -> str:
    """What this graph runs in: fp32 | fp16 | dynamic | int8 (full integer, CNNs) | static (weight FULLY_CONNECTED ops)."""
    if target.precision != "int8":
        return target.precision
    if graph.int8 == "float":
        return "fp32"
    if graph.kind == "cnn":
        return "int8"
    return "static" if graph.int8 == "static" and graph.torch.static_int8 else "dynamic"


def _why(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def build(graph: Graph, target: Target, run: Run) -> Built:
    """One graph of a ``tflite:<precision>`` target under ``stage/tflite/``; ``not_built`` when it cannot convert."""
    from importlib.util import find_spec

    from edgekit.backends.litert.fully_connected import fully_connected_modes, quantize_fully_connected
    from edgekit.backends.litert.runner import LiteRTRunner

    source = graph.torch
    if source is None:
        return Built(None, target.precision, not_built=f"needs a PyTorch module: LiteRT converts from PyTorch and the {graph.name} graph has none")
    missing = [name for name in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer") if find_spec(name) is None]
    if missing:
        return Built(None, target.precision, not_built=f"{', '.join(missing)} not installed (pip install -e \".[tflite]\")")
    mode = _mode(graph, target)
    if mode in ("int8", "static") and graph.calibration is None:
        return Built(None, target.precision, not_built=f"no calibration samples for the {graph.name} graph's static int8")
    folder = run.folder("tflite")
    qat = mode == "int8" and graph.trained_model is not None
    fp32 = folder / file_name(graph, "model_fp32_qat.tflite" if qat else "model_fp32.tflite")
    settings: dict = {}
    try:
        converted, carried = trained_source(graph) if qat else (source, {})
        settings["converter"] = convert(graph, fp32, run.recipe.model.batch, converted)
        if qat:
            settings["qat"] = {**carried, "from": graph.trained_model.name,
                               "ranges": "trained" if qat_ranges(graph, run.recipe) else "ai-edge-quantizer's on the trained weights"}
    except EdgekitError:
        raise
    except Exception as exc:  # litert-torch raises anything from torch.export, its JAX lowering or the MLIR converter
        return Built(None, target.precision, not_built=f"litert-torch cannot convert the {graph.name} graph ({_why(exc)})")
    path = fp32
    if mode != "fp32":
        path = folder / file_name(graph, f"model_{mode}.tflite")
        try:
            if mode == "static":
                settings["quantization"] = quantize_fully_connected(fp32, path, graph, run)
            else:
                settings["quantization"] = quantize(fp32, path, mode, graph, run)
                if graph.kind != "cnn":
                    settings["quantization"]["fully_connected"] = fully_connected_modes(path)
        except EdgekitError:
            raise
        except Exception as exc:
            return Built(None, target.precision, not_built=f"ai-edge-quantizer cannot quantize the {graph.name} graph to {mode} ({_why(exc)})")
    if target.precision == "int8" and graph.kind != "cnn" and graph.int8 == "static" and mode == "dynamic":
        settings["note"] = f"static int8 of the {graph.name} graph is built as dynamic int8 for LiteRT"
    threads = run.threads

    def make_runner() -> LiteRTRunner:
        return LiteRTRunner(path, threads=threads, input_names=list(source.input_names), output_names=list(source.output_names),
                            pad_sequences=source.pad_sequences, channels_last=list(source.channels_last))

    try:
        with make_runner() as runner:
            settings["interpreter"] = {
                "runtime": "ai-edge-litert", "version": package_version("ai-edge-litert"), "delegate": "XNNPACK", "threads": threads,
                "io_dtypes": runner.io_dtypes, "input_shapes": {m.name: list(m.shape) for m in runner.inputs},
            }
    except Exception as exc:
        return Built(None, target.precision, not_built=f"LiteRT cannot load the {graph.name} graph ({_why(exc)})")
    notes = []
    q = run.recipe.quantization
    if mode == "int8" and q is not None and q.keep_float.op_types:
        notes.append("keep_float.op_types name ONNX op types and are not applied to the tflite model (keep_float.nodes are, by module)")
    if mode == "int8":
        notes.append(settings["quantization"]["calibration"]["method"])
    files = [fp32] + ([path] if path != fp32 else [])
    settings["sha256"] = {p.name: sha256_file(p) for p in files}
    return Built(path, mode, make_runner, files, settings, notes=notes)
