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


# ------------------------------------------------------------------ OpenVINO and LiteRT: the Ultralytics export routes


def openvino_ultralytics(fp32: Path, out_xml: Path, images: list[Path], preprocess: Preprocess, head_prefix: str = "/model.24/") -> Path:
    """Ultralytics' ``format=openvino int8=True`` recipe on edgekit's FP32 model: ``nncf.quantize``, MIXED preset,
    every calibration image, ignoring every Sigmoid in the model and every op of the Detect head (its convolutions
    and decode), as ``ultralytics/utils/export/openvino.py`` (8.4) does on its own traced model."""
    import logging

    import nncf
    import openvino as ov

    from edgekit.backends.openvino.nncf_quant import save_ir_atomic

    nncf.set_log_level(logging.WARNING)
    model = ov.convert_model(str(fp32))
    ops = [o for o in model.get_ordered_ops() if o.get_type_name() not in ("Parameter", "Result", "Constant")]
    names = {o.get_friendly_name() for o in ops if o.get_type_name() == "Sigmoid" or o.get_friendly_name().startswith(head_prefix)}
    # the op producing the graph output is renamed after it; keep it with the head it belongs to
    names |= {o.get_friendly_name() for o in ops if any(head_prefix.strip("/") in n for out in o.outputs() for n in out.get_names())}
    quantized = nncf.quantize(
        model, nncf.Dataset(list(images), preprocess), preset=nncf.QuantizationPreset.MIXED, subset_size=len(images),
        ignored_scope=nncf.IgnoredScope(names=sorted(names), validate=False),
    )
    return save_ir_atomic(quantized, out_xml)


def litert_ultralytics(torch_model, out: Path, images: list[Path], preprocess: Preprocess, input_size: int, normalize_in_head: bool = False) -> Path:
    """Ultralytics' ``format=litert quantize=8`` route (``ultralytics/utils/export/litert.py``, 8.4): box
    coordinates divided by the input size so boxes and scores share one int8 scale, litert-torch conversion, then
    ai-edge-quantizer ``static_wi8_ai8`` on the whole graph (decode included) with float graph input/output,
    calibrated on ``images``. NHWC input as edgekit's. Run it through ``NormalizedBoxesRunner``.

    As written for Ultralytics' anchor-free heads, the division comes after the model. YOLOv5's anchor head already
    concatenates pixels and probabilities per level inside the decode, so ``normalize_in_head=True`` moves the
    division into the decode (before any concat): the route's intent, applied where it works for this head."""
    import copy

    import litert_torch
    import torch
    from ai_edge_quantizer import qtyping, quantizer, recipe

    model = copy.deepcopy(torch_model).eval()
    if normalize_in_head:  # the decode multiplies xy by the stride and wh by anchors x stride: scale the stride
        head = model.model[-1]
        head.stride = head.stride / input_size

    class NormalizeCoords(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            y = self.model(x)
            return y if normalize_in_head else torch.cat([y[..., :4] / input_size, y[..., 4:]], -1)

    wrapped = litert_torch.to_channel_last_io(NormalizeCoords().eval(), args=[0]).eval()
    fp32 = out.with_name(out.stem + "_fp32.tflite")
    litert_torch.convert(wrapped, (torch.zeros(1, input_size, input_size, 3),)).export(str(fp32))
    qt = quantizer.Quantizer(str(fp32))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
        qt.update_quantization_recipe(regex=".*", operation_name=op, algorithm_key=recipe.AlgorithmName.NO_QUANTIZE)
    samples = [{"args_0": np.ascontiguousarray(next(iter(preprocess(p).values())).transpose(0, 2, 3, 1))} for p in images]
    result = qt.calibrate({"serving_default": samples})
    qt.quantize(calibration_result=result).export_model(str(out), overwrite=True)
    return out


class NormalizedBoxesRunner:
    """Wraps a runner whose boxes are divided by the input size (the Ultralytics LiteRT layout) back to pixels."""

    def __init__(self, runner, input_size: int) -> None:
        self.runner, self.input_size = runner, input_size
        self.backend = runner.backend

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def __enter__(self):
        self.runner.load()
        return self

    def __exit__(self, *exc) -> None:
        self.runner.close()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.runner.infer(feed)  # runners return fresh arrays: scale in place
        for y in out.values():
            y[..., :4] *= self.input_size
        return out
