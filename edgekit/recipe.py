"""Recipes: YAML files validated by pydantic. An unknown or mistyped key is an error naming key and file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgekit.assets import expand
from edgekit.errors import EdgekitError


PathText = Annotated[str, AfterValidator(expand)]  # a path; ${EDGEKIT_ASSETS} and other variables expanded


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Strict):
    family: Literal["yolo", "clip", "vlm"] = "yolo"
    weights: PathText | None = Field(
        None,
        description="yolo: safetensors or Ultralytics .pt checkpoint; clip: a Hugging Face CLIPModel folder, an open_clip "
        "checkpoint file (with `config`), or a hub id; vlm: a Hugging Face LLaVA or SmolVLM/Idefics3 folder (pickles are read "
        "without executing code)",
    )
    config: PathText | None = Field(None, description="clip: open_clip or Hugging Face config JSON; vlm: a config folder (config.json, "
                                    "preprocessor_config.json); without weights, random weights from `seed`")
    tokenizer: PathText | None = Field(None, description="clip: OpenAI BPE file (.txt.gz), a tokenizer folder or a hub id (default: the weights folder)")
    seed: int = Field(0, description="clip: seed of the random weights used when only `config` is given")
    input_size: int = Field(640, ge=32, description="yolo: square input side in pixels; a multiple of the largest stride")
    batch: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _source(self) -> "ModelSpec":
        if self.family == "yolo" and not self.weights:
            raise ValueError("a yolo model needs `weights`")
        if self.family in ("clip", "vlm") and not (self.weights or self.config):
            raise ValueError(f"a {self.family} model needs `weights` (a model folder) or `config` (architecture, random weights)")
        return self



class ExportSpec(_Strict):
    opset: int = Field(17, ge=13, le=23)
    dynamic_batch: bool = False
    simplify: bool = True
    tolerance: float = Field(1e-3, gt=0, description="max abs error allowed between PyTorch and ONNX (normalized outputs)")
    nms_in_graph: bool = Field(False, description="also write *_nms.onnx deployment graphs with class-wise NMS inside")
    nms_conf_threshold: float = Field(0.25, ge=0, le=1)
    nms_iou_threshold: float = Field(0.45, gt=0, le=1)
    nms_max_detections: int = Field(300, ge=1, description="per image, best scores first")
    passes: list[str] = Field(
        default_factory=lambda: ["constant_folding", "fuse_conv_bn", "eliminate_identity", "remove_unused"],
        description="fusion passes run after export, in order (see `edgekit inspect --passes`)",
    )


class CalibrationSpec(_Strict):
    images: PathText
    count: int = Field(128, ge=1, description="number of images used (the first N by name)")
    warn_below: int = Field(32, ge=1)



class KeepFloat(_Strict):
    head: bool = Field(True, description="keep the model family's output decode in float (off reproduces the naive all-op baseline)")
    nodes: list[str] = Field(default_factory=list, description="node names (or name prefixes ending in '*') kept in float")
    op_types: list[str] = Field(default_factory=list, description="ONNX op types kept in float")


class QuantizationSpec(_Strict):
    enabled: bool = True
    calibration: CalibrationSpec
    method: Literal["minmax", "entropy", "percentile"] = "percentile"
    percentile: float = Field(99.99, gt=50, le=100)
    per_channel: bool = True
    keep_float: KeepFloat = Field(default_factory=KeepFloat)


BACKEND_PRECISIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("fp32", "int8", "int4", "dynamic"),  # int4 and dynamic: vlm decoders
    "openvino": ("fp32", "bf16", "fp16", "int8"),
    "tflite": ("fp32", "fp16", "dynamic", "int8"),
    "tensorrt": ("fp32", "fp16", "int8"),
}


class TargetSpec(_Strict):
    """One engine to build and measure, written ``backend:precision`` (e.g. ``openvino:int8``) or as a mapping."""

    backend: Literal["onnxruntime", "openvino", "tflite", "tensorrt"]
    precision: Literal["fp32", "fp16", "bf16", "dynamic", "int8", "int4"]
    accuracy_control: bool = Field(False, description="openvino:int8 only: NNCF quantize_with_accuracy_control held to the mAP50-95 budget")

    @model_validator(mode="after")
    def _supported(self) -> "TargetSpec":
        allowed = BACKEND_PRECISIONS[self.backend]
        if self.precision not in allowed:
            raise ValueError(f"{self.backend} has no precision {self.precision!r}: use one of {', '.join(allowed)}")
        if self.accuracy_control and (self.backend, self.precision) != ("openvino", "int8"):
            raise ValueError("accuracy_control applies to openvino:int8 only")
        return self

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.precision}" + ("+ac" if self.accuracy_control else "")


class OpenVinoSpec(_Strict):
    device: str = Field("CPU", description="OpenVINO device the models are compiled for")
    preset: Literal["mixed", "performance"] = Field("mixed", description="NNCF preset: mixed = symmetric weights, asymmetric activations")
    accuracy_control_max_images: int | None = Field(None, ge=1, description="evaluation images NNCF's accuracy control may use (None: all)")


class TFLiteSpec(_Strict):
    ranges: Literal["litert", "shared"] = Field(
        "litert",
        description="tflite:int8 activation ranges: ai-edge-quantizer's moving-average MinMax (litert), or the run's shared "
        "calibration ranges matched onto the TFLite tensors (shared); litert measured better on YOLOv5n",
    )


class TensorRTSpec(_Strict):
    """Engine build settings (see edgekit.backends.tensorrt.engine.TensorRTBuildConfig)."""

    workspace_mb: int = Field(1024, ge=1)
    max_batch: int = Field(1, ge=1, description="optimization profile max batch (needs export.dynamic_batch when > 1)")
    timing_cache: PathText | None = Field(None, description="persisted timing cache file, reused across builds")
    dla_core: int | None = Field(None, ge=0, description="Jetson DLA core; layers DLA cannot run fall back to the GPU")
    builder_optimization_level: int | None = Field(None, ge=0, le=5)
    build: Literal["auto", "never"] = Field("auto", description="auto: build when TensorRT or trtexec exists; never: write the ONNX, config and trtexec command only")


class TextCalibrationSpec(_Strict):
    captions: PathText = Field(description="COCO captions JSON; the captions of `images` calibrate the text tower")
    images: PathText | None = Field(None, description="only captions of the images in this folder (keeps evaluation images out)")
    count: int = Field(512, ge=1)


class ZeroShotSpec(_Strict):
    labels: PathText = Field(description="CSV with file, class_index and class name columns (images beside it unless `images`)")
    images: PathText | None = None
    templates: list[str] | None = Field(None, description="prompt templates with one '{}' for the class name")
    templates_file: PathText | None = Field(None, description="OpenAI's prompts markdown; used with `templates_section`")
    templates_section: str | None = None
    max_images: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _templates(self) -> "ZeroShotSpec":
        if not self.templates and not (self.templates_file and self.templates_section):
            raise ValueError("give `templates`, or `templates_file` with `templates_section`")
        return self


class RetrievalSpec(_Strict):
    captions: PathText = Field(description="COCO captions JSON")
    images: list[PathText] = Field(min_length=1, description="image folders; images without captions are skipped")
    max_images: int | None = Field(None, ge=1)


class ClipSpec(_Strict):
    """CLIP towers: how each is quantized, what calibrates the text tower, and how the pair is evaluated."""

    vision_int8: Literal["static", "float"] = Field("static", description="vision tower in int8 targets: static Q/DQ on the weight MatMuls, or kept float")
    text_int8: Literal["dynamic", "static", "float"] = Field(
        "dynamic", description="text tower in int8 targets: dynamic int8 MatMuls (ORT; weight-only int8 on OpenVINO), static Q/DQ, or float"
    )
    embedding_int8: bool = Field(True, description="int8 text towers also store the token embedding table as int8 rows (4x smaller)")
    smooth_quant: float | None = Field(None, gt=0, lt=1, description="SmoothQuant alpha: migrate activation outliers into LayerNorm-fed weights before static int8")
    context_length: int = Field(77, ge=8)
    text_calibration: TextCalibrationSpec | None = None
    zero_shot: ZeroShotSpec | None = None
    retrieval: RetrievalSpec | None = None
    label_embeddings: bool = Field(True, description="write the zero-shot class embeddings (from the FP32 text tower) as class_embeddings.npy")
    text_batch: int = Field(64, ge=1, description="texts per call when encoding prompts and captions")


class VlmSpec(_Strict):
    """Small VLMs: how each graph is quantized per target, and the fixed prompt set fidelity and speed are measured on.

    Targets (ONNX Runtime): ``fp32``; ``int8`` = decoder weight-only int8 (MatMulNBits); ``int4`` = weight-only int4
    (MatMulNBits, blockwise); ``dynamic`` = dynamic int8 MatMuls. Every quantized target shares one static-int8 vision
    graph (calibrated on `quantization.calibration`) and the embedding policy.
    """

    vision_int8: Literal["static", "float"] = Field("static", description="vision encoder + projector in quantized targets")
    block_size: int = Field(32, ge=16, description="MatMulNBits block along the input dimension (a power of 2)")
    symmetric: bool = Field(True, description="MatMulNBits without zero points")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4, description="MatMulNBits compute: 4 = int8 activations (CPU: 8-bit weights decode 2.0x faster than FP32 with it, 7x slower without), 0 = float")
    lm_head: Literal["same", "int8", "float"] = Field("same", description="lm_head weights: as the decoder's target, int8 (MatMulNBits 8-bit), or float")
    embedding: Literal["int8", "float"] = Field("int8", description="token embedding table of quantized targets: int8 rows, or float")
    images: PathText = Field("${EDGEKIT_ASSETS}/coco_val2017_subset/images", validate_default=True, description="images of the fixed prompt set (first N by name)")
    max_images: int = Field(8, ge=1)
    prompts: list[str] = Field(default_factory=lambda: ["Describe the image.", "What objects are in this picture?"], min_length=1)
    max_new_tokens: int = Field(24, ge=1)
    captions: PathText | None = Field(None, description="COCO captions JSON: BLEU-4 and CIDEr-D of `caption_prompt` answers")
    caption_prompt: str = "Describe the image in one sentence."
    caption_metrics: Literal["auto", "always", "off"] = Field("auto", description="auto: only when real weights are given (random weights score ~0)")
    speed_rounds: int = Field(5, ge=1, description="interleaved generation rounds per target for time to first token and decode speed")
    speed_tokens: int = Field(32, ge=2, description="tokens generated per speed round (no early stop)")
    pytorch_check: int = Field(2, ge=0, description="prompts whose FP32 ONNX greedy tokens must equal PyTorch generate's")


class DatasetSpec(_Strict):
    images: PathText
    annotations: PathText



class EvaluationSpec(_Strict):
    dataset: DatasetSpec
    metric: Literal["coco_map"] = "coco_map"
    max_images: int | None = Field(None, ge=1)
    conf_threshold: float = Field(0.001, ge=0, le=1)
    iou_threshold: float = Field(0.65, gt=0, le=1)
    max_detections: int = Field(300, ge=1)


class BenchmarkSpec(_Strict):
    warmup: int = Field(10, ge=0)
    runs: int = Field(50, ge=1)
    threads: int = Field(2, ge=1)


class Budget(_Strict):
    """A limit per metric: how much a higher-is-better metric may drop versus FP32, absolute (``max_drop``) or relative
    (``max_relative_drop``), or the most a lower-is-better metric such as a divergence may reach (``max_value``)."""

    max_drop: float | None = Field(None, ge=0)
    max_relative_drop: float | None = Field(None, ge=0, le=1)
    max_value: float | None = Field(None, description="ceiling on the variant's own value (e.g. logit_kl: 0.05)")

    @model_validator(mode="after")
    def _one_kind(self) -> "Budget":
        if sum(v is not None for v in (self.max_drop, self.max_relative_drop, self.max_value)) != 1:
            raise ValueError("give exactly one of max_drop (absolute), max_relative_drop (fraction) or max_value (ceiling)")
        return self


class Recipe(_Strict):
    name: str
    model: ModelSpec
    export: ExportSpec = Field(default_factory=ExportSpec)
    quantization: QuantizationSpec | None = None
    targets: list[TargetSpec] = Field(min_length=1)
    evaluation: EvaluationSpec | None = None
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    openvino: OpenVinoSpec = Field(default_factory=OpenVinoSpec)
    tflite: TFLiteSpec = Field(default_factory=TFLiteSpec)
    tensorrt: TensorRTSpec = Field(default_factory=TensorRTSpec)
    clip: ClipSpec | None = Field(None, description="clip family: tower quantization and zero-shot/retrieval evaluation")
    vlm: VlmSpec | None = Field(None, description="vlm family: decoder quantization and the generation fidelity/speed prompt set")
    budgets: dict[str, Budget] = Field(default_factory=dict, description="metric name -> allowed drop vs FP32")

    @field_validator("targets", mode="before")
    @classmethod
    def _parse_targets(cls, value):
        out = []
        for item in value or []:
            if isinstance(item, str):
                backend, _, precision = item.partition(":")
                item = {"backend": backend, "precision": precision or "fp32"}
            out.append(item)
        return out

    @model_validator(mode="after")
    def _batch_needs_dynamic_axis(self) -> "Recipe":
        if self.model.batch > 1 and not self.export.dynamic_batch:
            raise ValueError("model.batch > 1 needs export.dynamic_batch: true (evaluation runs image by image)")
        return self

    @model_validator(mode="after")
    def _int8_needs_quantization(self) -> "Recipe":
        if any(t.precision == "int8" for t in self.targets) and self.quantization is None:
            raise ValueError("an int8 target needs a `quantization:` section")
        return self

    @model_validator(mode="after")
    def _family_sections(self) -> "Recipe":
        if self.model.family == "clip":
            if self.evaluation is not None:
                raise ValueError("a clip recipe is evaluated by `clip.zero_shot` and `clip.retrieval`, not `evaluation`")
            if self.clip is None:
                self.clip = ClipSpec()
            c = self.clip
            if any(t.precision == "int8" for t in self.targets) and c.text_int8 == "static" and c.text_calibration is None:
                raise ValueError("clip.text_int8: static needs clip.text_calibration (captions)")
        elif self.clip is not None:
            raise ValueError("the `clip` section applies to model.family: clip only")
        if self.model.family == "vlm":
            if self.evaluation is not None:
                raise ValueError("a vlm recipe is evaluated by its `vlm` prompt set, not `evaluation`")
            if self.vlm is None:
                self.vlm = VlmSpec()
            other = [t.name for t in self.targets if t.backend != "onnxruntime"]
            if other:
                raise ValueError(f"vlm targets run on onnxruntime only (got {', '.join(other)})")
            if self.vlm.vision_int8 == "static" and self.quantization is None and any(t.precision != "fp32" for t in self.targets):
                raise ValueError("a quantized vlm target with vlm.vision_int8: static needs a `quantization:` section (calibration images)")
        else:
            if self.vlm is not None:
                raise ValueError("the `vlm` section applies to model.family: vlm only")
            odd = [t.name for t in self.targets if t.backend == "onnxruntime" and t.precision in ("int4", "dynamic")]
            if odd:
                raise ValueError(f"{', '.join(odd)}: onnxruntime int4/dynamic targets are for vlm decoders; use onnxruntime:int8")
        return self

    @model_validator(mode="after")
    def _unique_targets(self) -> "Recipe":
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"target listed twice: {sorted({n for n in names if names.count(n) > 1})}")
        if self.tensorrt.max_batch > 1 and not self.export.dynamic_batch:
            raise ValueError("tensorrt.max_batch > 1 needs export.dynamic_batch: true")
        if any(t.accuracy_control for t in self.targets) and (self.evaluation is None or "mAP50-95" not in self.budgets):
            raise ValueError("accuracy_control needs an evaluation dataset and a mAP50-95 budget (max_drop) to hold")
        return self


def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe; every problem becomes an ``EdgekitError`` naming the key and the file."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError("recipe not found", path, "pass the path of a recipe YAML, e.g. recipes/yolov5n.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise EdgekitError(f"invalid YAML{where}", path, "fix the YAML syntax") from exc
    if not isinstance(data, dict):
        raise EdgekitError("a recipe must be a YAML mapping", path, "see recipes/yolov5n.yaml")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a typo is the cause, "missing" its echo
        err = errors[0]
        key = _format_loc(err["loc"])
        if err["type"] == "extra_forbidden":
            hint = _did_you_mean(err["loc"])
            raise EdgekitError(f"unknown recipe key '{key}'{hint}", path, "remove it or correct its spelling (see README: recipe reference)") from exc
        if err["type"] == "missing":
            raise EdgekitError(f"missing recipe key '{key}'", path, "add it (see README: recipe reference)") from exc
        raise EdgekitError(f"bad value for '{key}': {err['msg']}", path, "correct the value (see README: recipe reference)") from exc


def _did_you_mean(loc: tuple) -> str:
    """Suggest the closest valid key at the place of an unknown one."""
    import difflib

    model: type[BaseModel] | None = Recipe
    for part in loc[:-1]:
        field_info = model.model_fields.get(str(part)) if model else None
        annotation = getattr(field_info, "annotation", None)
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = candidates[0] if candidates else None
    if model is None:
        return ""
    match = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""
