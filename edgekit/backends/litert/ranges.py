"""Carry the shared calibration ranges (computed once on the ONNX graph) over to a TFLite model's tensors.

The TFLite graph is converted from PyTorch, not from the ONNX file, so tensor names differ. Both graphs are run on
the same real image and every TFLite activation is matched to the ONNX tensor holding the same values (NHWC vs
NCHW, same element count, max difference within a float tolerance). Matched tensors take the shared range;
the rest keep ai-edge-quantizer's own MinMax range. The match count goes into the manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edgekit.quantization.spec import Range


def _tflite_activations(tflite_path: Path, feed_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tflite_path), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], feed_nhwc)
    it.invoke()
    out = {}
    for detail in it.get_tensor_details():
        if np.dtype(detail["dtype"]).kind != "f" or not detail["name"]:
            continue
        try:
            value = it.get_tensor(detail["index"])
        except ValueError:  # not materialized (e.g. a constant folded away)
            continue
        if value.size > 1:
            out[detail["name"]] = np.array(value, dtype=np.float32)
    return out


def _onnx_activations(model: onnx.ModelProto, tensors: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    from edgekit.quantization.calibration import observe_model

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(observe_model(model, tensors), options, providers=["CPUExecutionProvider"])
    return {name: np.asarray(v, dtype=np.float32) for name, v in zip(tensors, session.run(tensors, feed))}


def _as_nchw(value: np.ndarray, like: np.ndarray) -> np.ndarray | None:
    if value.shape == like.shape:
        return value
    if value.ndim == 4 and value.transpose(0, 3, 1, 2).shape == like.shape:
        return value.transpose(0, 3, 1, 2)
    return value.reshape(like.shape) if value.size == like.size else None


def match_tensors(tflite_path: Path, onnx_model: onnx.ModelProto, ranged: list[str], feed_nchw: dict[str, np.ndarray], rtol: float = 1e-3) -> dict[str, str]:
    """TFLite tensor name -> ONNX tensor name (among ``ranged``) holding the same values on ``feed_nchw``."""
    (x,) = feed_nchw.values()
    tfl = _tflite_activations(tflite_path, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    onnx_values = _onnx_activations(onnx_model, ranged, feed_nchw)
    by_size: dict[int, list[str]] = {}
    for name, value in onnx_values.items():
        by_size.setdefault(value.size, []).append(name)
    matches = {}
    for tname, tvalue in tfl.items():
        best, best_err = None, np.inf
        for oname in by_size.get(tvalue.size, []):
            ovalue = onnx_values[oname]
            aligned = _as_nchw(tvalue, ovalue)
            if aligned is None:
                continue
            err = float(np.abs(aligned - ovalue).max()) / (1.0 + float(np.abs(ovalue).max()))
            if err < best_err:
                best, best_err = oname, err
        if best is not None and best_err <= rtol:
            matches[tname] = best
    return matches


def apply_shared_ranges(qsvs: dict[str, dict], matches: dict[str, str], ranges: dict[str, Range]) -> int:
    """Overwrite ai-edge-quantizer's per-tensor ``min``/``max`` with the shared ranges; returns how many changed."""
    changed = 0
    for tname, oname in matches.items():
        if tname in qsvs and oname in ranges and "min" in qsvs[tname]:
            rng = ranges[oname]
            qsvs[tname]["min"] = np.full_like(np.asarray(qsvs[tname]["min"]), rng.low)
            qsvs[tname]["max"] = np.full_like(np.asarray(qsvs[tname]["max"]), rng.high)
            changed += 1
    return changed
