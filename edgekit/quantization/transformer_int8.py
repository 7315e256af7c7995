"""Static INT8 of a transformer graph (CLIP towers, VLM vision encoders): Q/DQ on the weight MatMuls only
(``TRANSFORMER_PLACEMENT``), calibrated on the recipe's samples, optionally after SmoothQuant."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import edgekit
from edgekit import progress
from edgekit.artifacts import write_json_atomic
from edgekit.onnx_io import load_onnx, save_onnx
from edgekit.recipe import QuantizationSpec


@dataclass
class TransformerInt8:
    """What a static transformer int8 pass leaves for other placements: its settings and calibrated ranges, and the
    FP32 model those ranges describe (``source``: SmoothQuant's rewritten model, written beside the int8 graph; else None)."""

    settings: dict[str, Any]
    ranges: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)  # ``calibration_settings`` of the ranges
    source: Path | None = None


def static_transformer_int8(fp32: Path, out: Path, samples: list, preprocess: Callable[[Any], dict], q: QuantizationSpec, threads: int,
                            smooth_quant: float | None = None, meta: dict[str, str] | None = None,
                            choose: Callable[[Any, list[str], Any], tuple[str, float]] | None = None, placement: Any = None) -> TransformerInt8:
    """Write the int8 graph to ``out`` and its spec beside it (``*_quant_spec.json``); returns its settings and ranges.

    ``choose(model, tensors, placement) -> (method, percentile)`` resolves ``method: auto`` on the model actually
    quantized (after SmoothQuant), e.g. ``Job.choose_ranges`` scoring candidates on the tuning samples. ``placement``:
    default the weight MatMuls (``TRANSFORMER_PLACEMENT``)."""
    from edgekit.errors import EdgekitError
    from edgekit.quantization.placement import TRANSFORMER_PLACEMENT, quantized_nodes, tensors_to_quantize
    from edgekit.quantization.ptq import quantize_static

    placement = placement or TRANSFORMER_PLACEMENT
    model = load_onnx(fp32)
    smooth = None
    if smooth_quant:
        from edgekit.quantization.smooth_quant import smooth_quant as apply_smooth_quant

        model, smooth = apply_smooth_quant(model, samples, preprocess, alpha=smooth_quant, threads=threads, progress=progress.track)
    method, percentile = q.method, q.percentile
    if method == "auto":
        if choose is None:
            raise EdgekitError("quantization.method: auto needs a tuning metric this graph's family does not give", out,
                               "set quantization.method to minmax, percentile, entropy or mse")
        nodes = quantized_nodes(model, placement, q.keep_float.nodes, q.keep_float.op_types)
        method, percentile = choose(model, tensors_to_quantize(model, nodes), placement)
    result = quantize_static(
        model, samples, preprocess=preprocess, method=method, percentile=percentile, per_channel=q.per_channel,
        float_nodes=q.keep_float.nodes, float_ops=q.keep_float.op_types, placement=placement,
        threads=threads, progress=progress.track,
    )
    settings = dict(result.spec.settings)
    settings["calibration_samples"] = settings.pop("calibration_images")
    if smooth is not None:
        settings["smooth_quant"] = smooth
    save_onnx(result.model, out, {"edgekit_version": edgekit.__version__, "precision": "int8", **(meta or {}), "quantization": json.dumps(settings, sort_keys=True)})
    write_json_atomic(out.with_name(out.stem.removesuffix("_int8") + "_quant_spec.json"), result.spec.to_dict())
    source = None
    if smooth is not None:  # other placements (TensorRT) place these ranges on the smoothed weights they describe
        source = out.with_name(out.stem.removesuffix("_int8") + "_fp32_smoothed.onnx")
        save_onnx(model, source, {"edgekit_version": edgekit.__version__, "precision": "fp32", "smooth_quant": json.dumps(smooth, sort_keys=True)})
    calibration = {k: result.spec.settings[k] for k in ("method", "percentile", "per_channel", "calibration_images", "calibration_key")}
    return TransformerInt8(settings, dict(result.calibration.ranges), calibration, source)
