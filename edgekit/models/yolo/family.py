"""The YOLO model family: loading, example inputs, pre/post-processing and float-kept head nodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgekit.errors import EdgekitError
from edgekit.models.yolo.build import YoloModel, model_from_checkpoint
from edgekit.models.yolo.checkpoint import load_checkpoint
from edgekit.models.yolo.modules import Detect
from edgekit.models.yolo.processing import Detections, Letterbox, postprocess, preprocess

MAX_STRIDE = 32


@dataclass
class YoloFamily:
    """Everything edgekit needs to know about a YOLO detector, independent of the backend it runs on."""

    input_size: int = 640
    input_name: str = "images"
    output_name: str = "output0"
    names: list[str] = field(default_factory=list)
    anchor_based: bool = True
    head_index: int | None = None

    name = "yolo"

    def validate_input_size(self, source: str | Path | None = None) -> None:
        if self.input_size % MAX_STRIDE:
            fix = f"use a multiple of {MAX_STRIDE}, e.g. {round(self.input_size / MAX_STRIDE) * MAX_STRIDE or MAX_STRIDE}"
            raise EdgekitError(f"input size {self.input_size} is not a multiple of the model's stride {MAX_STRIDE}", source, fix)

    @classmethod
    def from_runner_metadata(cls, inputs: list, outputs: list, input_size: int | None = None) -> YoloFamily:
        """Settings for an already exported model: input name/size from its input, head layout from its output.

        YOLOv5 outputs (batch, anchors, 5 + classes); YOLOv8 outputs (batch, 4 + classes, anchors).
        """
        inp, out = inputs[0], outputs[0]
        size = input_size or (inp.shape[-1] if isinstance(inp.shape[-1], int) else 640)
        dims = out.shape
        channels_first = len(dims) == 3 and all(isinstance(d, int) for d in dims[1:]) and dims[1] < dims[2]
        return cls(input_size=size, input_name=inp.name, output_name=out.name, anchor_based=not channels_first)

    def load_torch(self, weights: str | Path) -> YoloModel:
        """Build the network from the checkpoint's architecture table and load its weights (FP32, eval)."""
        model = model_from_checkpoint(load_checkpoint(weights))
        self.names = model.names
        self.anchor_based = isinstance(model.head, Detect)
        self.head_index = len(model.model) - 1
        return model

    def preprocess(self, path: str | Path) -> tuple[dict[str, np.ndarray], Letterbox]:
        tensor, box = preprocess(path, self.input_size)
        return {self.input_name: tensor}, box

    def postprocess(self, outputs: dict[str, np.ndarray], meta: Letterbox, conf: float = 0.001, iou: float = 0.65, max_det: int = 300) -> Detections:
        outputs = self.join_outputs(outputs)
        pred = outputs[self.output_name][0] if self.output_name in outputs else next(iter(outputs.values()))[0]
        if not self.anchor_based:
            pred = pred.T
        return postprocess(pred, meta, conf, iou, max_det, has_objectness=self.anchor_based)

    def join_outputs(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The single ``output0`` layout from split ``boxes``/``scores`` outputs (LiteRT keeps them apart so each
        gets its own int8 scale); other outputs pass through."""
        if "boxes" not in outputs or "scores" not in outputs:
            return outputs
        return {self.output_name: np.concatenate([outputs["boxes"], outputs["scores"]], axis=-1 if self.anchor_based else 1)}

    def head_prefix(self) -> str:
        """ONNX node-name prefix of the detection head (module-scoped names from the TorchScript exporter)."""
        return f"/model.{self.head_index}/"

    def head_nodes(self, model: onnx.ModelProto) -> list[str]:
        """Every node of the detection head: its 1x1 convolutions and its decode."""
        prefix = self.head_prefix()
        return [n.name for n in model.graph.node if n.name.startswith(prefix)]

    def float_nodes(self, model: onnx.ModelProto) -> list[str]:
        """Nodes kept in float automatically: the head's decode (grid, anchors, strides) and the final concat.

        The head's 1x1 convolutions stay quantizable; everything after them mixes pixel coordinates with
        probabilities under one tensor and must not share one INT8 scale.
        """
        prefix = self.head_prefix()
        return [n.name for n in model.graph.node if n.name.startswith(prefix) and n.op_type != "Conv"]
