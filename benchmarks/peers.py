"""Peer INT8 pipelines for ONNX Runtime, run the way their documentation shows (for benchmarks only)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over preprocessed images."""

    def __init__(self, images: list[Path], preprocess: Callable[[Path], dict[str, np.ndarray]]) -> None:
        self.images, self.preprocess, self.i = images, preprocess, 0

    def get_next(self):
        if self.i >= len(self.images):
            return None
        self.i += 1
        return self.preprocess(self.images[self.i - 1])

    def rewind(self) -> None:
        self.i = 0


def ort_quantize_static(
    fp32: Path, out: Path, images: list[Path], preprocess, op_types: list[str] | None, exclude: list[str], uint8_activations: bool = False
) -> Path:
    """``onnxruntime.quantization.quantize_static``: QDQ, per-channel weights, MinMax; int8 activations (ORT's default)
    or uint8 activations (ORT's advice for x86 with VNNI)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(fp32), str(out), _Reader(images, preprocess), quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
        nodes_to_exclude=exclude, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
        activation_type=QuantType.QUInt8 if uint8_activations else QuantType.QInt8, weight_type=QuantType.QInt8,
    )
    return out


def nncf_quantize(fp32: Path, out: Path, images: list[Path], preprocess, ignored: list[str]) -> Path:
    """NNCF post-training quantization of the ONNX model with the head decode in its ignored scope."""
    import nncf

    model = onnx.load(str(fp32))
    dataset = nncf.Dataset(images, preprocess)
    quantized = nncf.quantize(model, dataset, subset_size=len(images), ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))
    onnx.save(quantized, str(out))
    return out
