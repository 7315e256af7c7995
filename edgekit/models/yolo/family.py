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
    num_classes: int | None = None  # class scores per box (None: unknown, a dynamic output)

    name = "yolo"

    def validate_input_size(self, source: str | Path | None = None) -> None:
        if self.input_size % MAX_STRIDE:
            fix = f"use a multiple of {MAX_STRIDE}, e.g. {round(self.input_size / MAX_STRIDE) * MAX_STRIDE or MAX_STRIDE}"
            raise EdgekitError(f"input size {self.input_size} is not a multiple of the model's stride {MAX_STRIDE}", source, fix)

    @classmethod
    def from_runner_metadata(cls, inputs: list, outputs: list, input_size: int | None = None, source: str | Path | None = None) -> YoloFamily:
        """Settings for an already exported model: input name/size from its input, head layout from its output.

        YOLOv5 outputs (batch, anchors, 5 + classes); YOLOv8 outputs (batch, 4 + classes, anchors); edgekit's LiteRT
        detectors a ``boxes`` + ``scores`` pair. Any other model (a classifier, another input) is refused up front,
        naming ``source``, rather than failing inside the runtime.
        """

        def shape(meta) -> tuple[int | None, ...]:
            return tuple(d if isinstance(d, int) and d > 0 else None for d in meta.shape)

        def text(meta) -> str:
            return f"{meta.name!r} ({', '.join('?' if d is None else str(d) for d in shape(meta))})"

        def refuse(what: str) -> None:
            raise EdgekitError(f"not a YOLO detector: {what}", source, "give a YOLO detector: one float image input (batch, 3, H, W), H = W, and one output "
                               "(batch, anchors, 5 + classes) as YOLOv5 or (batch, 4 + classes, anchors) as YOLOv8")

        if len(inputs) != 1:
            refuse(f"it has {len(inputs)} inputs ({', '.join(text(m) for m in inputs)})")
        inp = inputs[0]
        dims = shape(inp)
        if len(dims) != 4 or dims[1] not in (3, None) or np.dtype(inp.dtype).kind != "f":
            refuse(f"its input {text(inp)} {np.dtype(inp.dtype)} is not a float (batch, 3, H, W) image")
        h, w = dims[2], dims[3]
        if h and w and h != w:
            refuse(f"its input {text(inp)} is not square")
        if input_size and (h or w) and input_size != (h or w):
            raise EdgekitError(f"--input-size {input_size} differs from the model's static input side {h or w}", source, "omit --input-size")
        size = input_size or h or w or 640
        if not outputs:
            refuse("it has no outputs")
        out, classes = outputs[0], None
        odims = shape(out)
        if len(odims) != 3:
            refuse(f"its output {text(out)} is not 3-D")
        if len(outputs) == 2 and 4 in (odims[1], odims[2]):  # edgekit's LiteRT layout: boxes (.., 4) + scores
            anchor_based = odims[2] == 4
            sdims = shape(outputs[1])
            if len(sdims) != 3:
                refuse(f"its scores output {text(outputs[1])} is not 3-D")
            score_channels = sdims[2] if anchor_based else sdims[1]
            classes = None if score_channels is None else score_channels - (1 if anchor_based else 0)
        else:
            anchor_based = not (odims[1] is not None and odims[2] is not None and odims[1] < odims[2])
            channels = odims[2] if anchor_based else odims[1]
            classes = None if channels is None else channels - (5 if anchor_based else 4)
        if classes is not None and classes < 1:
            refuse(f"its output {text(out)} has too few channels for boxes, {'objectness, ' if anchor_based else ''}and class scores")
        return cls(input_size=size, input_name=inp.name, output_name=out.name, anchor_based=anchor_based, num_classes=classes)

    def load_torch(self, weights: str | Path) -> YoloModel:
        """Build the network from the checkpoint's architecture table and load its weights (FP32, eval)."""
        model = model_from_checkpoint(load_checkpoint(weights))
        self.names = model.names
        self.num_classes = len(model.names) or None
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
