"""OpenVINO: IR converted from the FP32 ONNX, INT8 by NNCF, compiled for ``openvino.device``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgekit.backends.base import Backend, Built, Graph, Run
from edgekit.config import Strict
from edgekit.targets import Target


class OpenVinoSpec(Strict):
    device: str = Field("CPU", description="OpenVINO device the models are compiled for")
    preset: Literal["mixed", "performance"] = Field("mixed", description="NNCF preset: mixed = symmetric weights, asymmetric activations")
    accuracy_control_data: Literal["tuning", "evaluation"] = Field(
        "tuning", description="what NNCF's accuracy control validates on: tuning (label-free, the tuning images and metric "
        "quantization.search scores with, budget accuracy_control_max_loss_pt) or evaluation (the labelled evaluation images and "
        "budgets.mAP50-95: the evaluation then measures what it chose, so its drop is optimistic)")
    accuracy_control_max_loss_pt: float | None = Field(None, gt=0, description="tuning-metric loss NNCF's accuracy control may keep, "
                                                       "100 (1 - score) (default: quantization.search.max_loss_pt)")
    accuracy_control_max_images: int | None = Field(None, ge=1, description="validation images NNCF's accuracy control may use (None: all)")
    int8_from: Literal["auto", "nncf", "qdq"] = Field("auto", description="CNN int8 IR: nncf (NNCF quantizes the FP32 IR), qdq (OpenVINO "
                                                    "imports edgekit's ONNX Runtime Q/DQ graph), auto (qdq when QAT trained that graph, else nncf)")


class OpenVinoBackend(Backend):
    name = "openvino"
    precisions = ("fp32", "bf16", "fp16", "int8")
    suffixes = (".xml",)
    config = OpenVinoSpec
    accuracy_control = True
    install = "openvino"
    wide_float_scope = True
    times_candidates = True
    scores_budgeted_candidates = True

    def available(self) -> str | None:
        from importlib.util import find_spec

        missing = [m for m in ("openvino", "nncf") if find_spec(m) is None]
        return f"{', '.join(missing)} not installed (pip install 'edgekit[openvino]')" if missing else None

    def build(self, graph: Graph, target: Target, run: Run) -> Built:
        from edgekit.backends.openvino.builder import build

        return build(graph, target, run)

    def runner(self, path: str | Path, threads: int | None = None, **options: Any):
        from edgekit.backends.openvino.runner import OpenVinoRunner

        return OpenVinoRunner(path, threads=threads, **options)

    def candidate_runner(self, path: Path, float_nodes: list[str], graph: Any, threads: int, recipe, scoring: bool = False) -> Any:
        """The int8 IR NNCF builds with exactly ``float_nodes`` ignored (this target's own quantizer and placement; 2
        calibration samples and no bias correction, which change no kernel: built for timing in seconds), compiled
        as the int8 target is. Its files are deleted once compiled. ``path`` (the Q/DQ ONNX) names the candidate.

        ``scoring``: a candidate whose tuning loss is the deployed one. NNCF's int8 of the search's scope is built once
        as the target is (every calibration sample, full bias correction: about 35 s for YOLOv5n on 2 cores) and each
        candidate reverts its groups in a copy (:func:`revert_to_float`, NNCF accuracy control's own move). On
        YOLOv5n's 32 search images that int8 loses 1.1 pt of pseudo mAP where the 2-sample timing build loses 5.1 and
        the ORT Q/DQ form of the same scope 10.8: losses of other builds do not transfer."""
        from edgekit.backends.openvino.builder import precision_hint
        from edgekit.backends.openvino.nncf_quant import quantize_openvino, quantize_openvino_model, revert_to_float
        from edgekit.backends.openvino.runner import OpenVinoRunner, import_openvino

        spec = recipe.openvino
        hint = precision_hint("int8", spec.device)
        model = None
        if scoring:
            cached = self.__dict__.get("_scoring_base")
            wanted = set(float_nodes)
            if cached is None or cached[0] != graph.fp32 or not cached[1] <= wanted:  # the first call is the search's all-int8 base
                cached = self._scoring_base = (graph.fp32, wanted, quantize_openvino_model(graph.fp32, graph.calibration, float_nodes, spec.preset))
            model = revert_to_float(cached[2], graph.fp32, sorted(wanted - cached[1])) if wanted != cached[1] else cached[2]
        xml = path.with_name(f"{path.stem}_openvino.xml")
        try:
            if model is not None:
                import_openvino().save_model(model, str(xml), compress_to_fp16=False)
            else:
                quantize_openvino(graph.fp32, xml, graph.calibration, float_nodes, preset=spec.preset, samples=2, bias_correction=False)
            runner = OpenVinoRunner(xml, threads=threads, precision_hint=hint, device=spec.device)
            runner.load()
        finally:
            xml.unlink(missing_ok=True)
            xml.with_suffix(".bin").unlink(missing_ok=True)
        return runner
