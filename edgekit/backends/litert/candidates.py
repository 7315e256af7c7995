"""LiteRT search candidates: the ``tflite:int8`` engine with a set of ONNX quantizer groups left float.

Each candidate is what ``tflite:int8`` would build: the FP32 ``.tflite`` (converted once, the file the build then
reuses), ai-edge-quantizer's full-integer recipe with the family's float patterns plus the candidate's groups mapped
onto the same modules (:mod:`edgekit.backends.litert.scope`), and ai-edge-quantizer's own MinMax ranges. Calibration
measures the float model, so it is run once per graph and every candidate is quantized from it (seconds, not a
calibration pass each). Since LiteRT's ranges and activation scheme (asymmetric) are its own, the search scores
these candidates themselves (``LiteRTBackend.scores_candidates``), not the ONNX Runtime Q/DQ model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.backends.base import Graph, Run, file_name
from edgekit.errors import EdgekitError

_CALIBRATION: dict[tuple[str, float], Any] = {}  # (fp32 .tflite, its mtime) -> ai-edge-quantizer calibration result


def fp32_tflite(graph: Graph, recipe) -> Path:
    """The graph's FP32 ``.tflite`` where ``tflite`` targets build it (converted now when missing)."""
    from edgekit.backends.litert.builder import convert

    if graph.torch is None or graph.kind != "cnn" or graph.int8 != "static" or graph.calibration is None:
        raise EdgekitError(f"tflite candidates need a full-integer CNN graph with a PyTorch module and calibration ({graph.name})",
                           fix="set quantization.search.per_backend: false")
    folder = Path(graph.fp32).parent / "tflite"
    folder.mkdir(exist_ok=True)
    path = folder / file_name(graph, "model_fp32.tflite")
    convert(graph, path, recipe.model.batch)
    return path


def calibration(fp32: Path, graph: Graph, recipe, threads: int) -> Any:
    """ai-edge-quantizer's calibration of ``fp32`` on the graph's calibration feeds (all-int8 recipe), made once."""
    from edgekit import progress
    from edgekit.backends.litert.builder import (
        SIGNATURE,
        calibration_feeds,
        float_regexes,
        int8_quantizer,
        quiet_unless_interactive,
    )

    key = (str(fp32), fp32.stat().st_mtime)
    if key not in _CALIBRATION:
        q = int8_quantizer(fp32, float_regexes(fp32, graph, recipe))
        feeds = calibration_feeds(fp32, graph, Run(recipe, fp32.parent, progress.track), "calibrate tflite:int8 (search)")
        with quiet_unless_interactive():
            _CALIBRATION[key] = q.calibrate({SIGNATURE: feeds}, num_threads=threads)
    return _CALIBRATION[key]


def candidate(graph: Graph, recipe, float_nodes: list[str], out: Path, threads: int) -> Path:
    """Write the ``tflite:int8`` model of ``graph`` with ``float_nodes`` (ONNX patterns) also float to ``out``."""
    from edgekit.backends.litert.builder import float_regexes, int8_quantizer, quiet_unless_interactive

    fp32 = fp32_tflite(graph, recipe)
    calibrated = calibration(fp32, graph, recipe, threads)
    q = int8_quantizer(fp32, float_regexes(fp32, graph, recipe, float_nodes))
    with quiet_unless_interactive():
        result = q.quantize(calibrated, enable_progress_bar=False, enable_progress_report=False)
    out.write_bytes(bytes(result.quantized_model))
    return out


def candidate_runner(path: Path, float_nodes: list[str], graph: Graph, threads: int, recipe) -> Any:
    """A loaded LiteRT runner of the candidate (its ``.tflite`` next to ``path``, deleted once loaded)."""
    from edgekit.backends.litert.runner import LiteRTRunner

    source = graph.torch
    tflite = candidate(graph, recipe, float_nodes, path.with_name(f"{path.stem}_tflite.tflite"), threads)
    try:
        runner = LiteRTRunner(tflite, threads=threads, input_names=list(source.input_names), output_names=list(source.output_names),
                              pad_sequences=source.pad_sequences, channels_last=list(source.channels_last))
        runner.load()
    finally:
        tflite.unlink(missing_ok=True)
    return runner
