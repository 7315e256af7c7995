"""Post-training static quantization: calibrate, build the spec, place Q/DQ."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgekit.quantization.calibration import CalibrationResult, collect_ranges
from edgekit.quantization.placement import ORT_PLACEMENT, Placement, build_spec, quantized_nodes, tensors_to_quantize
from edgekit.quantization.qdq import insert_qdq
from edgekit.quantization.spec import QuantSpec


def tensors_for_placements(model: onnx.ModelProto, placements: list[Placement], float_nodes: list[str], float_ops: list[str]) -> list[str]:
    """Every activation tensor any of ``placements`` quantizes: calibrate these once for all backends of a run."""
    tensors: set[str] = set()
    for placement in placements:
        tensors |= set(tensors_to_quantize(model, quantized_nodes(model, placement, float_nodes, float_ops)))
    return sorted(tensors)


@dataclass
class PTQResult:
    model: onnx.ModelProto
    spec: QuantSpec
    calibration: CalibrationResult


def quantize_static(
    model: onnx.ModelProto,
    images: Sequence[Path | str],
    preprocess: Callable[[Path | str], dict[str, np.ndarray]],
    method: str = "percentile",
    percentile: float = 99.99,
    per_channel: bool = True,
    float_nodes: list[str] | None = None,
    float_ops: list[str] | None = None,
    placement: Placement = ORT_PLACEMENT,
    threads: int = 2,
    progress: Callable[[str, int], Iterator[int]] | None = None,
    use_cache: bool = True,
    also_calibrate: list[str] | None = None,
    reduce_range: bool | None = None,
) -> PTQResult:
    """Calibrate ``model`` on ``images`` (image paths, or texts for a text encoder) and return its Q/DQ INT8 version with the spec that describes it.

    ``also_calibrate`` adds tensors other placements of the same run need (``tensors_for_placements``), so every
    backend's spec reads its ranges from one calibration pass (one cache entry).
    """
    float_nodes, float_ops = list(float_nodes or []), list(float_ops or [])
    nodes = quantized_nodes(model, placement, float_nodes, float_ops)
    tensors = sorted(set(tensors_to_quantize(model, nodes)) | set(also_calibrate or []))
    calib = collect_ranges(model, tensors, images, preprocess, method, percentile, threads, progress, use_cache)
    if reduce_range is None:  # 7-bit weights in uint8 placements where x86 int8 pair sums saturate (no VNNI)
        from edgekit.profiling.device import int8_pair_sums_saturate

        reduce_range = int8_pair_sums_saturate()
    settings = calibration_settings(method, percentile, per_channel, len(images), calib.key, reduce_range)
    qdq, spec = place(model, placement, calib.ranges, float_nodes, float_ops, settings)
    return PTQResult(qdq, spec, calib)


def calibration_settings(method: str, percentile: float, per_channel: bool, samples: int, key: str, reduce_range: bool = False) -> dict:
    """How the shared ranges were calibrated (every placement's spec records them); ``reduce_range``: 7-bit weights
    in placements with uint8 activations (see :func:`place`)."""
    return {"method": method, "percentile": percentile if method == "percentile" else None, "per_channel": per_channel,
            "calibration_images": samples, "calibration_key": key, "reduce_range": reduce_range}


def place(model: onnx.ModelProto, placement: Placement, ranges: dict, float_nodes: list[str], float_ops: list[str],
          calibration: dict) -> tuple[onnx.ModelProto, QuantSpec]:
    """The Q/DQ model and spec of ``placement`` from already calibrated ``ranges``: each backend's placement reads
    the one calibration pass of the run instead of calibrating again."""
    nodes = quantized_nodes(model, placement, float_nodes, float_ops)
    spec = build_spec(model, placement, ranges, float_nodes, float_ops, calibration["per_channel"])
    # uint8 activations x int8 weights (u8s8) saturate the 16-bit pair sums of x86 int8 kernels without VNNI
    # (AVX2, AVX-512F): ONNX Runtime's and OpenVINO's documented fix is a 7-bit weight range
    qmax = 63 if calibration.get("reduce_range") and placement.activation_dtype == "uint8" else 127
    spec.settings = {
        "method": calibration["method"],
        "percentile": calibration["percentile"],
        "per_channel": calibration["per_channel"],
        "placement": placement.name,
        "activation_dtype": placement.activation_dtype + (" symmetric" if placement.activation_dtype == "int8" else ""),
        "quantized_nodes": len(nodes),
        "weight_dtype": "int8 symmetric" + (", 7-bit range (-63..63)" if qmax == 63 else ""),
        "weight_qmax": qmax,
        "bias": "float" if placement.float_bias else "int32",
        "calibration_images": calibration["calibration_images"],
        "calibration_key": calibration["calibration_key"],
    }
    return insert_qdq(model, spec, quantize_bias=not placement.float_bias), spec
