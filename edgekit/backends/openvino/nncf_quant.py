"""INT8 OpenVINO IR with NNCF: convert the FP32 ONNX model, quantize it with the family's float nodes ignored, save.

How ONNX node names survive ``openvino.convert_model`` (checked on YOLOv5n, OpenVINO 2026.4):

* a 1:1 op keeps the ONNX node name as its friendly name (``/model.24/Sigmoid`` -> ``Sigmoid`` op
  ``/model.24/Sigmoid``); its output tensor keeps the ONNX tensor name (``/model.24/Sigmoid_output_0``);
* an ONNX ``Conv`` with bias becomes ``Convolution`` ``<name>/WithoutBiases`` + ``Add`` ``<name>``;
* the op producing a graph output is renamed after the output tensor (``/model.24/Concat_6`` -> ``output0``);
* the frontend fuses constant arithmetic (YOLOv5's ``Mul(2) -> Sub(0.5) -> Add(grid)`` becomes one
  ``Multiply_<n>`` and an ``Add`` named after the *last* ONNX node), so some ONNX names vanish and some OpenVINO
  ops have generated names and no ONNX tensor names at all.

``openvino_ignored_names`` therefore matches by friendly name, then by output tensor name, then adds the
generated-name ops whose every non-constant input comes from an already ignored op (the fused decode
arithmetic). On YOLOv5n the 46 ONNX decode nodes map to 40 OpenVINO ops: exactly the non-constant ops downstream
of the three head convs (tested).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgekit.backends.base import AccuracyCheck, LazyFeeds
from edgekit.backends.openvino.runner import import_openvino, read_model
from edgekit.errors import EdgekitError

_STRUCTURAL = {"Constant", "Parameter", "Result"}


def _import_nncf():
    import logging

    from edgekit.optional import require

    nncf = require("nncf", "openvino", "openvino:int8 targets")

    nncf.set_log_level(logging.WARNING)  # one INFO line per ignored op otherwise
    return nncf


def openvino_ignored_names(ov_model, onnx_model, float_nodes: Iterable[str]) -> list[str]:
    """Friendly names of the OpenVINO ops that implement the ONNX nodes ``float_nodes`` (see the module doc)."""
    float_nodes = set(float_nodes)
    onnx_names = {n.name for n in onnx_model.graph.node}
    float_tensors = {t for n in onnx_model.graph.node if n.name in float_nodes for t in n.output}
    onnx_tensors = {t for n in onnx_model.graph.node for t in n.output}
    ignored: set[str] = set()
    for op in ov_model.get_ordered_ops():  # topological order
        if op.get_type_name() in _STRUCTURAL:
            continue
        name = op.get_friendly_name()
        tensor_names = {t for out in op.outputs() for t in out.get_names()}
        if name in float_nodes or name.rsplit("/", 1)[0] in float_nodes or tensor_names & float_tensors:  # Conv -> <name>/WithoutBiases + Add <name>
            ignored.add(name)
            continue
        if name in onnx_names or tensor_names & onnx_tensors:
            continue  # a quantizable ONNX node (or a node the caller did not ask to keep float)
        producers = [inp.get_source_output().get_node() for inp in op.inputs()]
        live = [p for p in producers if p.get_type_name() != "Constant"]
        if live and all(p.get_friendly_name() in ignored for p in live):
            ignored.add(name)  # generated op fused from float decode arithmetic
    return sorted(ignored)


def save_ir_atomic(ov_model, out_xml: str | Path, compress_to_fp16: bool = False) -> Path:
    """``openvino.save_model`` into a temporary folder beside ``out_xml``, then rename .bin and .xml into place."""
    ov = import_openvino()
    out_xml = Path(out_xml)
    if out_xml.suffix != ".xml":
        raise EdgekitError("OpenVINO IR path must end with .xml", out_xml, "use e.g. model_int8.xml")
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_xml.stem}.", dir=out_xml.parent))
    try:
        tmp_xml = staging / out_xml.name
        ov.save_model(ov_model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        # .bin first: a reader that sees the new .xml always finds its weights.
        (staging / out_xml.with_suffix(".bin").name).replace(out_xml.with_suffix(".bin"))
        tmp_xml.replace(out_xml)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_xml


def _prepare(fp32_onnx: Path, feeds: LazyFeeds, float_nodes: list[str], preset: str):
    nncf = _import_nncf()
    import onnx

    fp32_onnx = Path(fp32_onnx)
    if not len(feeds):
        raise EdgekitError("no calibration images", fix="pass at least one calibration image")
    read_model(fp32_onnx)  # one-line error for a missing/corrupt model
    # convert_model, not read_model: its conversion passes give a smaller IR and a faster INT8 model (measured
    # 0.56x vs 0.76x of ORT FP32 latency on YOLOv5n)
    ov_model = import_openvino().convert_model(str(fp32_onnx))
    names = openvino_ignored_names(ov_model, onnx.load(str(fp32_onnx), load_external_data=False), float_nodes)
    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    if preset not in presets:
        raise EdgekitError(f"unknown NNCF preset {preset!r}", fix="use one of: mixed, performance")
    scope = nncf.IgnoredScope(names=names, validate=False)
    return ov_model, presets[preset], scope


def revert_to_float(quantized, fp32_onnx: Path, float_nodes: Iterable[str]):
    """A copy of NNCF's quantized ``ov.Model`` with the FakeQuantize ops that feed the ops of the ONNX nodes
    ``float_nodes`` bypassed, as NNCF's accuracy control reverts a layer: the rest keeps its ranges and its bias
    correction, so a candidate costs a clone and a compile instead of a new quantization (35 s for YOLOv5n)."""
    import onnx

    model = quantized.clone()
    names = set(openvino_ignored_names(model, onnx.load(str(fp32_onnx), load_external_data=False), float_nodes))
    for op in model.get_ordered_ops():
        if op.get_friendly_name() not in names:
            continue
        for inp in op.inputs():
            source = inp.get_source_output().get_node()
            if source.get_type_name() == "FakeQuantize":
                inp.replace_source_output(source.input_value(0))
    return model


def quantize_openvino_model(fp32_onnx: Path, feeds: LazyFeeds, float_nodes: list[str], preset: str = "mixed"):
    """The in-memory ``ov.Model`` :func:`quantize_openvino` saves (every feed, full bias correction)."""
    nncf = _import_nncf()
    ov_model, preset_value, scope = _prepare(fp32_onnx, feeds, float_nodes, preset)
    return nncf.quantize(ov_model, nncf.Dataset(feeds.items, feeds.transform), preset=preset_value, subset_size=len(feeds),
                         ignored_scope=scope, fast_bias_correction=False)


def quantize_openvino(
    fp32_onnx: Path,
    out_xml: Path,
    feeds: LazyFeeds,
    float_nodes: list[str],
    preset: str = "mixed",
    fast_bias_correction: bool = False,
    samples: int | None = None,
    bias_correction: bool = True,
) -> Path:
    """INT8 OpenVINO IR of ``fp32_onnx`` by NNCF post-training quantization; returns ``out_xml``.

    ``feeds``: the calibration feeds (made one at a time from their items); ``float_nodes`` are ONNX node names
    mapped to OpenVINO op names and ignored by NNCF. ``mixed``: symmetric weights, asymmetric activations. Every
    feed is used (``subset_size=len(feeds)``). ``fast_bias_correction=False`` runs NNCF's full bias correction: on
    YOLOv5n -0.22 pt instead of -0.44 pt with the fast one, at the same latency, for about a minute more.
    ``samples`` (first N feeds) and ``bias_correction=False`` make an IR for timing only (the search's candidates):
    the same int8 graph, built in seconds.
    """
    nncf = _import_nncf()
    ov_model, preset_value, scope = _prepare(fp32_onnx, feeds, float_nodes, preset)
    items = feeds.items[:samples] if samples else feeds.items
    dataset = nncf.Dataset(items, feeds.transform)
    advanced = nncf.AdvancedQuantizationParameters(disable_bias_correction=not bias_correction)
    quantized = nncf.quantize(ov_model, dataset, preset=preset_value, subset_size=len(items), ignored_scope=scope,
                              fast_bias_correction=fast_bias_correction, advanced_parameters=advanced)
    return save_ir_atomic(quantized, out_xml)


class CompiledModelRunner:
    """What :class:`~edgekit.backends.base.AccuracyCheck` validates: ``infer(feed) -> outputs by name`` over the
    ``ov.CompiledModel`` NNCF's accuracy control hands its validation function."""

    def __init__(self, compiled) -> None:
        self.compiled, self.request = compiled, compiled.create_infer_request()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer(feed)
        return {port.get_any_name(): np.asarray(results[port]) for port in self.compiled.outputs}

    def close(self) -> None:
        self.request = None


def quantize_openvino_with_accuracy_control(
    fp32_onnx: Path, out_xml: Path, feeds: LazyFeeds, float_nodes: list[str], check: AccuracyCheck, preset: str = "mixed"
) -> Path:
    """``nncf.quantize_with_accuracy_control``: quantize, then revert the most harmful layers to float until the
    metric's drop on ``check.items`` is at most ``check.max_drop`` (absolute).

    Slow: NNCF validates the FP32 and INT8 models on the whole validation set, ranks layers (one validation per
    candidate group on a subset) and re-validates after each revert -- tens of full evaluations; on 2 CPU cores
    and 158 images expect tens of minutes. Fewer validation items trade trust for time.
    """
    nncf = _import_nncf()
    ov_model, preset_value, scope = _prepare(fp32_onnx, feeds, float_nodes, preset)
    if not check.items:
        raise EdgekitError("no evaluation images found for accuracy control", fix="check the evaluation images folder and annotations")
    quantized = nncf.quantize_with_accuracy_control(
        ov_model,
        calibration_dataset=nncf.Dataset(feeds.items, feeds.transform),
        validation_dataset=nncf.Dataset(check.items, check.transform),
        validation_fn=lambda compiled, items: check.validate(CompiledModelRunner(compiled), items),
        max_drop=check.max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=preset_value,
        subset_size=len(feeds),
        ignored_scope=scope,
        fast_bias_correction=False,
    )
    return save_ir_atomic(quantized, out_xml)


def quantize_openvino_transformer(fp32_onnx: Path, out_xml: Path, feeds: list[dict[str, np.ndarray]] | None, mode: str) -> dict:
    """INT8 OpenVINO IR of a transformer graph (a CLIP tower); returns the settings for the manifest.

    ``static``: NNCF post-training quantization with ``ModelType.TRANSFORMER`` (LayerNorm, Softmax, GELU and the
    attention arithmetic stay float, as NNCF's transformer rules say) calibrated on ``feeds``. ``dynamic``: int8
    weight compression (``nncf.compress_weights``, INT8_ASYM); OpenVINO's CPU plugin quantizes the activations of
    compressed MatMuls at run time (its dynamic quantization), which is OpenVINO's counterpart of ORT's dynamic int8.
    """
    nncf = _import_nncf()
    read_model(fp32_onnx)
    ov_model = import_openvino().convert_model(str(fp32_onnx))
    if mode == "static":
        if not feeds:
            raise EdgekitError("no calibration samples for static int8", fp32_onnx, "give calibration images (vision) or captions (text)")
        dataset = nncf.Dataset(list(feeds))
        quantized = nncf.quantize(ov_model, dataset, model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED, subset_size=len(feeds))
        settings = {"nncf": "quantize", "model_type": "transformer", "preset": "mixed", "calibration_samples": len(feeds)}
    elif mode == "dynamic":
        quantized = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        settings = {"nncf": "compress_weights", "mode": "int8_asym", "activations": "dynamic (CPU plugin)"}
    else:
        raise EdgekitError(f"unknown OpenVINO int8 mode {mode!r}", fix="use static or dynamic")
    save_ir_atomic(quantized, out_xml)
    return settings
