"""Peer INT8 pipelines for ONNX Runtime, called the way their own documentation shows (benchmarks only).

Every function takes the FP32 ONNX model's path, writes the quantized model to ``out`` and returns ``out``.
``preprocess`` maps an image path to the model's feed dict ``{input_name: float32 NCHW array}``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

Preprocess = Callable[[Path], dict[str, np.ndarray]]


class ImageReader(CalibrationDataReader):
    """``onnxruntime.quantization.CalibrationDataReader`` over images, preprocessed lazily one at a time."""

    def __init__(self, images: list[Path], preprocess: Preprocess) -> None:
        self.images, self.preprocess, self.i = list(images), preprocess, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.images):
            return None
        self.i += 1
        return self.preprocess(self.images[self.i - 1])

    def rewind(self) -> None:
        self.i = 0

    def __len__(self) -> int:
        return len(self.images)


def _ort_quantize(fp32: Path, out: Path, images: list[Path], preprocess: Preprocess, **kwargs) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    quantize_static(
        str(fp32), str(out), ImageReader(images, preprocess), quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=CalibrationMethod.MinMax, **kwargs
    )
    return out


def ort_conv_only(fp32: Path, out: Path, images: list[Path], preprocess: Preprocess, exclude: list[str], uint8_activations: bool = False) -> Path:
    """``onnxruntime.quantization.quantize_static``: QDQ, MinMax, per-channel, only ``Conv`` quantized, the head decode
    (``exclude``) left in float. Activations int8 (ORT's default, S8S8) or uint8 (U8S8, ORT's x86 advice)."""
    from onnxruntime.quantization import QuantType

    return _ort_quantize(
        fp32, out, images, preprocess, op_types_to_quantize=["Conv"], nodes_to_exclude=list(exclude),
        activation_type=QuantType.QUInt8 if uint8_activations else QuantType.QInt8, weight_type=QuantType.QInt8,
    )


def ort_all_ops(fp32: Path, out: Path, images: list[Path], preprocess: Preprocess) -> Path:
    """``onnxruntime.quantization.quantize_static`` with its defaults: every supported op type, no exclusions
    (QDQ, MinMax, per-channel). Known to give ~0 detections on YOLOv5: the head's concat mixes pixels and
    probabilities under one scale."""
    return _ort_quantize(fp32, out, images, preprocess)


def nncf_onnx(fp32: Path, out: Path, images: list[Path], preprocess: Preprocess, ignored: list[str], preset: str | None = None) -> Path:
    """``nncf.quantize`` on the ONNX model (NNCF needs opset >= 13), every calibration image (``subset_size``),
    the head decode in the ignored scope. ``preset``: None (NNCF's default, PERFORMANCE = symmetric activations)
    or ``"mixed"`` (asymmetric activations; NNCF's YOLO examples use it)."""
    import logging

    import nncf

    nncf.set_log_level(logging.WARNING)  # NNCF logs every node it leaves unquantized at INFO
    model = onnx.load(str(fp32))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        model = onnx.version_converter.convert_version(model, 13)
    quantized = nncf.quantize(
        model,
        nncf.Dataset(list(images), preprocess),
        preset=nncf.QuantizationPreset(preset) if preset else None,
        subset_size=len(images),
        ignored_scope=nncf.IgnoredScope(names=list(ignored)),
    )
    onnx.save(quantized, str(out))
    return out
