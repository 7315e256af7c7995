"""OpenVINO: IR converted from the fused FP32 ONNX; INT8 by NNCF (optionally accuracy-controlled).

Every target is compiled for ``recipe.openvino.device`` with explicit thread, precision and latency hints; the
values read back from the compiled model go into the report, so it states what actually ran.
"""

from __future__ import annotations

from edgekit.backends.base import BuildInputs, BuiltTarget
from edgekit.errors import EdgekitError
from edgekit.recipe import TargetSpec

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


def _float_nodes(inputs: BuildInputs) -> list[str]:
    """NNCF's ignored scope: the whole detection head (its 1x1 convolutions too, as Ultralytics' OpenVINO export
    does) plus the recipe's own nodes. Measured on YOLOv5n (158 images): head float +0.09 pt at 15.5 ms; decode
    only float -0.22 pt at 15.2 ms; Ultralytics' scope +0.08 pt at 15.6 ms (ORT FP32 27 ms, interleaved)."""
    q = inputs.recipe.quantization
    if q is None or not q.keep_float.head:
        return inputs.float_nodes
    import onnx

    model = onnx.load(str(inputs.fp32_onnx), load_external_data=False)
    return inputs.family.head_nodes(model) + list(q.keep_float.nodes)


def build(inputs: BuildInputs, target: TargetSpec) -> BuiltTarget:
    from edgekit.backends.openvino.nncf_quant import quantize_openvino, quantize_openvino_with_accuracy_control

    r, spec = inputs.recipe, inputs.recipe.openvino
    name, compress, _ = VARIANTS[target.precision]
    hint = precision_hint(target.precision, spec.device)
    folder = inputs.stage / "openvino"
    folder.mkdir(exist_ok=True)
    xml = folder / (name.replace("int8", "int8_ac") if target.accuracy_control else name)
    settings: dict = {"device": spec.device, "precision_hint": hint, "ir": xml.name}
    if target.precision == "int8":
        preprocess, float_nodes = inputs.family.preprocess, _float_nodes(inputs)
        settings["nncf"] = {
            "preset": spec.preset, "fast_bias_correction": False, "calibration_images": len(inputs.calibration_images),
            "ignored_onnx_nodes": len(float_nodes), "head": "float (convolutions and decode)" if r.quantization.keep_float.head else "quantized",
        }
        if target.accuracy_control:
            ev = r.evaluation
            max_drop = r.budgets["mAP50-95"].max_drop
            if max_drop is None:
                raise EdgekitError("accuracy_control needs budgets.mAP50-95.max_drop (absolute)", fix="set budgets: {mAP50-95: {max_drop: 0.005}}")
            quantize_openvino_with_accuracy_control(
                inputs.fp32_onnx, xml, inputs.calibration_images, preprocess, float_nodes, inputs.family,
                ev.dataset.images, ev.dataset.annotations, max_drop=max_drop, max_eval_images=spec.accuracy_control_max_images, preset=spec.preset,
            )
            settings["nncf"]["accuracy_control"] = {"metric": "mAP50-95", "max_drop": max_drop, "max_images": spec.accuracy_control_max_images}
        else:
            quantize_openvino(inputs.fp32_onnx, xml, inputs.calibration_images, preprocess, float_nodes, preset=spec.preset)
    else:
        convert_float_ir(inputs.fp32_onnx, xml, compress)
    make_runner, settings["compiled"] = compiled_runner(xml, r.benchmark.threads, hint, spec.device)
    notes = []
    if settings["compiled"].get("INFERENCE_PRECISION_HINT") not in (None, hint):
        notes.append(f"asked for {hint}, the device compiled {settings['compiled']['INFERENCE_PRECISION_HINT']}")
    return BuiltTarget(target, xml, make_runner, files=[xml, xml.with_suffix(".bin")], settings=settings, notes=notes)
