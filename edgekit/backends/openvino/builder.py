"""OpenVINO: IR converted from the fused FP32 ONNX; INT8 by NNCF (optionally accuracy-controlled).

Every target is compiled for ``recipe.openvino.device`` with explicit thread, precision and latency hints; the
values read back from the compiled model go into the report, so it states what actually ran.
"""

from __future__ import annotations

from edgekit.backends.base import Built, Graph, Run, file_name
from edgekit.errors import EdgekitError
from edgekit.targets import Target

# target precision -> (IR file, compress weights to fp16, compile-time INFERENCE_PRECISION_HINT)
VARIANTS = {
    "fp32": ("model_fp32.xml", False, "f32"),
    "bf16": ("model_fp32.xml", False, "bf16"),
    "fp16": ("model_fp16.xml", True, "f16"),
    "int8": ("model_int8.xml", False, "auto"),  # float parts (the head): bf16 where the device has it, else f32
}


def precision_hint(precision: str, device: str) -> str:
    """The compile-time precision hint of a target precision on ``device`` (``auto`` resolved)."""
    hint = VARIANTS[precision][2]
    return _auto_hint(device) if hint == "auto" else hint


def convert_float_ir(fp32_onnx, xml, compress_to_fp16: bool) -> None:
    """The float IR of ``fp32_onnx`` at ``xml`` (written once per run: fp32 and bf16 targets share it)."""
    from edgekit.backends.openvino.nncf_quant import save_ir_atomic
    from edgekit.backends.openvino.runner import import_openvino, read_model

    if not xml.is_file():
        read_model(fp32_onnx)  # one-line error for a missing/corrupt model
        save_ir_atomic(import_openvino().convert_model(str(fp32_onnx)), xml, compress_to_fp16=compress_to_fp16)


def compiled_runner(xml, threads: int, hint: str, device: str):
    """``(make_runner, compiled properties read back)`` for an IR: the report states what actually ran."""
    from edgekit.backends.openvino.runner import OpenVinoRunner

    def make_runner() -> OpenVinoRunner:
        return OpenVinoRunner(xml, threads=threads, precision_hint=hint, device=device)

    with make_runner() as runner:
        return make_runner, runner.settings


def _auto_hint(device: str) -> str:
    """bf16 where the device lists BF16 among its optimization capabilities (OpenVINO's own CPU default), else f32."""
    from edgekit.backends.openvino.runner import import_openvino

    try:
        caps = import_openvino().Core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    except Exception:  # a device without the property
        return "f32"
    return "bf16" if "BF16" in caps else "f32"


def build(graph: Graph, target: Target, run: Run) -> Built:
    """One graph of an ``openvino:<precision>`` target: the float IR, or int8 by NNCF (a CNN: post-training
    quantization with the graph's float scope ignored, optionally accuracy-controlled; a transformer: NNCF's
    transformer rules, or int8 weight compression for a dynamic graph)."""
    from edgekit.backends.openvino.nncf_quant import (
        quantize_openvino,
        quantize_openvino_model,
        quantize_openvino_transformer,
        quantize_openvino_with_accuracy_control,
        revert_to_float,
        save_ir_atomic,
    )
    from edgekit.backends.openvino.runner import import_openvino

    spec = run.recipe.openvino
    int8 = target.precision == "int8" and graph.int8 != "float"
    name, compress, _ = VARIANTS[target.precision]
    hint = precision_hint(target.precision, spec.device)
    folder = run.folder("openvino")
    if target.accuracy_control:
        name = name.replace("int8", "int8_ac")
    elif target.precision == "int8" and not int8:  # a graph kept float in int8 targets
        name = "model_fp32.xml"
    xml = folder / file_name(graph, name)
    settings: dict = {"device": spec.device, "precision_hint": hint, "ir": xml.name}
    qdq = graph.quantized.get("int8")
    trained = qdq is not None and "qat_training" in qdq.settings
    if int8 and graph.kind == "cnn" and not target.accuracy_control and (spec.int8_from == "qdq" or (spec.int8_from == "auto" and trained)):
        # OpenVINO reads Q/DQ pairs as FakeQuantize and runs them with its int8 kernels: the QAT-trained graph as is
        save_ir_atomic(import_openvino().convert_model(str(qdq.path)), xml)
        settings["int8_from"] = f"edgekit Q/DQ ({qdq.path.name}{', QAT-trained' if trained else ''})"
    elif int8 and graph.kind == "cnn":
        float_nodes = graph.backend_float_nodes if graph.backend_float_nodes is not None else graph.float_nodes
        feeds = graph.calibration
        if feeds is None:
            return Built(None, target.precision, not_built=f"no calibration samples for the {graph.name} graph")
        settings["nncf"] = {
            "preset": spec.preset, "fast_bias_correction": False, "calibration_images": len(feeds),
            "ignored_onnx_nodes": len(float_nodes), "head": "float (convolutions and decode)" if graph.backend_float_nodes else "quantized",
        }
        if target.accuracy_control:
            check = graph.accuracy
            if check is None:
                return Built(None, target.precision, not_built=f"the {graph.name} graph has no accuracy check for NNCF's accuracy control")
            quantize_openvino_with_accuracy_control(graph.fp32, xml, feeds, float_nodes, check, preset=spec.preset)
            settings["nncf"]["accuracy_control"] = {"metric": check.metric, "max_drop": check.max_drop, "max_images": spec.accuracy_control_max_images}
        elif "openvino" in graph.searched_float_nodes:  # a budgeted search scored reverts of this quantization: build the same
            reverted = set(graph.searched_float_nodes["openvino"])
            base = quantize_openvino_model(graph.fp32, feeds, [n for n in float_nodes if n not in reverted], preset=spec.preset)
            save_ir_atomic(revert_to_float(base, graph.fp32, sorted(reverted)) if reverted else base, xml)
            settings["nncf"]["reverted_onnx_nodes"] = len(reverted)
        else:
            quantize_openvino(graph.fp32, xml, feeds, float_nodes, preset=spec.preset)
    elif int8:
        feeds = list(graph.calibration) if graph.int8 == "static" and graph.calibration is not None else None
        settings["nncf"] = quantize_openvino_transformer(graph.fp32, xml, feeds, graph.int8)
    else:
        convert_float_ir(graph.fp32, xml, compress)
    try:
        make_runner, settings["compiled"] = compiled_runner(xml, run.threads, hint, spec.device)
    except EdgekitError as exc:  # the plugin cannot compile this IR (seen: grouped convolutions of ShuffleNet-v1 in int8)
        return Built(None, target.precision, files=[xml, xml.with_suffix(".bin")], settings=settings,
                     not_built=f"OpenVINO cannot compile the {graph.name} graph: {str(exc).split(' -- fix')[0]}")
    notes = []
    if settings["compiled"].get("INFERENCE_PRECISION_HINT") not in (None, hint):
        notes.append(f"asked for {hint}, the device compiled {settings['compiled']['INFERENCE_PRECISION_HINT']}")
    precision = (graph.int8 if graph.kind != "cnn" else "int8") if int8 else ("fp32" if target.precision == "int8" else target.precision)
    return Built(xml, precision, make_runner, [xml, xml.with_suffix(".bin")], settings, notes=notes)
