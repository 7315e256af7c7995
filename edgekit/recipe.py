"""Recipes: YAML files validated by pydantic. An unknown or mistyped key is an error naming key and file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from edgekit import registry
from edgekit.config import PathText
from edgekit.config import Strict as _Strict
from edgekit.errors import EdgekitError
from edgekit.targets import Target

TargetSpec = Target  # the name recipes' targets had before edgekit.targets


class ModelSpec(_Strict):
    family: str = Field("yolo", description="a registered family: yolo, clip, vlm, onnx, or one a package adds by entry point")
    weights: PathText | None = Field(
        None,
        description="yolo: safetensors or Ultralytics .pt checkpoint; clip: a Hugging Face CLIPModel folder, an open_clip "
        "checkpoint file (with `config`), or a hub id; vlm: a Hugging Face LLaVA or SmolVLM/Idefics3 folder (pickles are read "
        "without executing code); onnx: the .onnx model file",
    )
    config: PathText | None = Field(None, description="clip: open_clip or Hugging Face config JSON; vlm: a config folder (config.json, "
                                    "preprocessor_config.json); without weights, random weights from `seed`")
    tokenizer: PathText | None = Field(None, description="clip: OpenAI BPE file (.txt.gz), a tokenizer folder or a hub id (default: the weights folder)")
    seed: int = Field(0, description="clip: seed of the random weights used when only `config` is given")
    input_size: int = Field(640, ge=32, description="yolo: square input side in pixels; a multiple of the largest stride")
    batch: int = Field(1, ge=1)

    @field_validator("family")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in registry.family_names():
            raise ValueError(f"unknown model family {value!r}: use one of {', '.join(registry.family_names())}")
        return value



class ExportSpec(_Strict):
    opset: int = Field(17, ge=13, le=23)
    dynamic_batch: bool = False
    simplify: bool = True
    tolerance: float = Field(1e-3, gt=0, description="max abs error allowed between PyTorch and ONNX (normalized outputs)")
    nms_in_graph: bool = Field(False, description="also write *_nms.onnx deployment graphs with class-wise NMS inside")
    nms_conf_threshold: float = Field(0.25, ge=0, le=1)
    nms_iou_threshold: float = Field(0.45, gt=0, le=1)
    nms_max_detections: int = Field(300, ge=1, description="per image, best scores first")
    passes: list[str | dict] = Field(
        default_factory=lambda: ["constant_folding", "fuse_conv_bn", "eliminate_identity", "remove_unused"],
        description="fusion passes run after export, in order: a name or {name: {option: value}} (see `edgekit inspect --passes`)",
    )

    @field_validator("passes")
    @classmethod
    def _configured_passes(cls, value: list) -> list:
        """Every pass known and its options valid for its config, at load time (the message names pass and option)."""
        from pydantic_core import PydanticCustomError

        from edgekit.passes import build_passes

        value = [{k: {} if v is None else v for k, v in e.items()} if isinstance(e, dict) else e for e in value]
        try:
            build_passes(value)
        except EdgekitError as exc:
            reason = str(exc).split(" -- fix: ")[0] + (f" ({exc.fix})" if exc.fix and exc.fix != "correct the value" else "")
            raise PydanticCustomError("pass_config", "{reason}", {"reason": reason}) from exc
        return value


class CalibrationSpec(_Strict):
    images: PathText
    count: int = Field(128, ge=1, description="number of images used (the first N by name)")
    warn_below: int = Field(32, ge=1)



class KeepFloat(_Strict):
    head: bool = Field(True, description="keep the model family's output decode in float (off reproduces the naive all-op baseline)")
    nodes: list[str] = Field(default_factory=list, description="node names (or name prefixes ending in '*') kept in float")
    op_types: list[str] = Field(default_factory=list, description="ONNX op types kept in float")


DEFAULT_RANGE_CANDIDATES = ("percentile:99.99", "percentile:99.999", "mse", "entropy", "minmax")


class TuningSpec(_Strict):
    """The images that choose settings by their accuracy (never the evaluation images), scored label-free against FP32."""

    images: PathText | None = Field(None, description="folder of tuning images (default: the calibration images)")
    count: int | None = Field(None, ge=1, description="number of tuning images, the first N by name (default: the calibration count)")
    candidates: list[str] = Field(list(DEFAULT_RANGE_CANDIDATES), min_length=1,
                                  description="range methods `method: auto` tries (the first is the default): minmax, entropy, mse, percentile:P")
    folds: int = Field(5, ge=2, le=50, description="interleaved folds of the tuning images over which a candidate's gain is paired")
    min_evidence: float = Field(2.0, ge=0, description="a candidate replaces the first only when its paired gain is at least this many "
                                "standard errors (0: the best score wins)")

    @field_validator("candidates")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        from edgekit.quantization.calibration import parse_candidate

        for text in value:
            parse_candidate(text)
        return list(dict.fromkeys(value))


class SearchSpec(_Strict):
    """Budget-driven mixed precision: the fastest set of quantizer groups left float whose tuning loss meets the budget."""

    enabled: bool = True
    max_loss_pt: float | None = Field(None, description="tuning-metric loss allowed, 100 (1 - score) (default: the loss of full PTQ "
                                      "with the chosen ranges: faster at no loss of tuning accuracy)")
    margin_pt: float = Field(0.0, ge=0, description="safety margin subtracted from max_loss_pt")
    time_limit_s: float = Field(300, gt=0, description="wall-time limit of the search per graph")
    latency_runs: int = Field(30, ge=3, description="timed runs per candidate (median)")
    images: int | None = Field(32, ge=1, description="tuning images each candidate is scored on (the first N; None: all)")
    per_backend: bool = Field(True, description="also search, for each other int8 target whose backend builds candidates "
                              "itself (OpenVINO: timed; LiteRT: timed and scored), its own float groups priced in its own latency "
                              "(sharing the sensitivity table)")


class QatSpec(_Strict):
    """Label-free QAT of the ONNX Runtime Q/DQ graph, distilled from the FP32 model (edgekit.qat)."""

    steps: int = Field(300, ge=1, description="optimizer steps")
    batch: int = Field(2, ge=1, description="images per step (gradients accumulated image by image)")
    lr: float = Field(1e-5, gt=0, description="Adam learning rate of the float master weights and biases")
    scale_lr: float | None = Field(None, gt=0, description="Adam learning rate of the activation scales (default: lr)")
    learn_scales: bool = Field(True, description="train activation scales (LSQ-style) as well as weights")
    images: list[PathText] | None = Field(None, description="unlabelled training image folders (default: the calibration folder); "
                                          "never the evaluation folder")
    count: int | None = Field(None, ge=1, description="images taken from each folder (the first N by name; None: all)")
    flip: bool = Field(True, description="random horizontal flips (seeded per step)")
    seed: int = 0
    checkpoint_every: int = Field(25, ge=1, description="steps between checkpoints (an interrupted run resumes from the last)")
    features: bool = Field(True, description="also distil each quantized LayerNormalization output (transformer blocks; CNNs have none)")
    feature_weight: float = Field(1.0, gt=0, description="weight of that feature loss beside the output loss")


class QuantizationSpec(_Strict):
    enabled: bool = Field(True, description="false: no quantization (every quantized target is refused, naming this key)")
    calibration: CalibrationSpec
    method: Literal["auto", "minmax", "entropy", "percentile", "mse"] = Field(
        "percentile", description="activation ranges: minmax, percentile (both tails at `percentile`), entropy (KL, "
        "TensorRT-style upper clip), mse (per tensor, the clip of least expected int8 quantization error on the calibration data), "
        "auto (each of `tuning.candidates` scored label-free on the tuning images; the best serves every placement)")
    bias_correction: bool | Literal["auto"] = Field(False, description="correct each quantized conv's bias for the mean shift its int8 "
                                                   "weights and input add (ONNX Runtime's Q/DQ; auto: kept only on evidence on the tuning images)")
    bias_correction_samples: int = Field(32, ge=1, description="calibration samples the mean shifts are measured on")
    tuning: TuningSpec = Field(default_factory=TuningSpec)
    search: SearchSpec | None = Field(None, description="budget-driven mixed precision on ONNX Runtime's placement (edgekit.tuning.search)")
    mode: Literal["ptq", "qat", "auto"] = Field("ptq", description="qat: distil the ONNX Runtime int8 graph from FP32 after PTQ; "
                                                 "auto: only when the search's choice misses search.max_loss_pt on the tuning images")
    qat: QatSpec = Field(default_factory=QatSpec)
    percentile: float = Field(99.99, gt=50, le=100)
    per_channel: bool = True
    reduce_range: bool | Literal["auto"] = Field("auto", description="7-bit weights (-63..63) in ONNX Runtime's uint8 Q/DQ: x86 int8 kernels "
                                                 "without VNNI saturate u8s8 pair sums (measured: YOLOv5n -2.5 pt on an AVX2 EPYC); auto: on "
                                                 "x86 CPUs without AVX-512 VNNI, AVX-VNNI or AMX, which the manifest records")
    keep_float: KeepFloat = Field(default_factory=KeepFloat)

    def reduce_range_here(self) -> bool:
        """``reduce_range`` resolved on this machine."""
        if self.reduce_range != "auto":
            return bool(self.reduce_range)
        from edgekit.profiling.device import int8_pair_sums_saturate

        return int8_pair_sums_saturate()


class DatasetSpec(_Strict):
    images: PathText
    annotations: PathText
    allow_missing_images: bool = Field(False, description="score the annotated images found in `images` (the report says how many) "
                                       "instead of refusing a folder that lacks some")



class EvaluationSpec(_Strict):
    dataset: DatasetSpec
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
    def _one_kind(self) -> Budget:
        if sum(v is not None for v in (self.max_drop, self.max_relative_drop, self.max_value)) != 1:
            raise ValueError("give exactly one of max_drop (absolute), max_relative_drop (fraction) or max_value (ceiling)")
        return self


class _Recipe(_Strict):
    name: str
    model: ModelSpec
    export: ExportSpec = Field(default_factory=ExportSpec)
    quantization: QuantizationSpec | None = None
    targets: list[Target] = Field(min_length=1)
    evaluation: EvaluationSpec | None = None
    benchmark: BenchmarkSpec = Field(default_factory=BenchmarkSpec)
    budgets: dict[str, Budget] = Field(default_factory=dict, description="metric name -> allowed drop vs FP32")

    @field_validator("targets", mode="before")
    @classmethod
    def _parse_targets(cls, value):
        if not isinstance(value, (list, tuple)):
            return value  # pydantic names the wrong type (targets: a list of "backend:precision")
        return [Target.fields_of(item) if isinstance(item, str) else item for item in value]  # errors name targets.N

    @model_validator(mode="after")
    def _batch_needs_dynamic_axis(self) -> _Recipe:
        if self.model.batch > 1 and not self.export.dynamic_batch:
            raise ValueError("model.batch > 1 needs export.dynamic_batch: true (evaluation runs image by image)")
        return self

    @model_validator(mode="after")
    def _quantized_needs_quantization(self) -> _Recipe:
        q = self.quantization
        if q is not None and not q.enabled:
            odd = [t.name for t in self.targets if t.quantized]
            if odd:
                raise ValueError(f"quantization.enabled is false but {', '.join(odd)} need quantization: remove them, or enable it")
            self.quantization = None
        if any(t.precision == "int8" for t in self.targets) and self.quantization is None:
            raise ValueError("an int8 target needs a `quantization:` section")
        return self

    @model_validator(mode="after")
    def _family(self) -> _Recipe:
        """The family's own rules, its backends, the ONNX forms it makes, and no other family's section."""
        family = registry.family(self.model.family)
        for other in registry.families():
            if other is not family and other.config is not None and getattr(self, other.name, None) is not None:
                raise ValueError(f"the `{other.name}` section applies to model.family: {other.name} only")
        if family.backends is not None:
            odd = [t.name for t in self.targets if t.backend not in family.backends]
            if odd:
                raise ValueError(f"{family.name} targets run on {', '.join(family.backends)} only (got {', '.join(odd)})")
        odd = [t.name for t in self.targets if registry.backend(t.backend).runs_forms and t.quantized and t.precision not in family.forms]
        if odd:
            raise ValueError(f"{', '.join(odd)}: the {family.name} family makes no such ONNX form (onnxruntime int4/dynamic targets are for vlm "
                             f"decoders); use {odd[0].split(':')[0]}:{family.forms[0]}")
        family.check_recipe(self)
        return self

    @model_validator(mode="after")
    def _qat_rules(self) -> _Recipe:
        q = self.quantization
        if q is None or q.mode == "ptq":
            return self
        if not registry.family(self.model.family).supports_qat:
            raise ValueError(f"quantization.mode: {q.mode}: the {self.model.family} family has no QAT loss yet; use mode: ptq")
        if q.mode == "auto" and (q.search is None or not q.search.enabled or q.search.max_loss_pt is None):
            raise ValueError("quantization.mode: auto decides on the search's budget: set quantization.search.max_loss_pt")
        if self.evaluation is not None and q.qat.images:
            held = Path(str(self.evaluation.dataset.images)).resolve()
            if any(Path(str(f)).resolve() == held for f in q.qat.images):
                raise ValueError("quantization.qat.images names the evaluation folder: QAT must train on other images")
        return self

    @model_validator(mode="after")
    def _unique_targets(self) -> _Recipe:
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"target listed twice: {sorted({n for n in names if names.count(n) > 1})}")
        for backend in registry.backends():
            backend.check_recipe(self)
        return self


def _sections() -> dict:
    """Every registered backend's and family's recipe section, named after it (``openvino:``, ``clip:``)."""
    fields: dict = {}
    for backend in registry.backends():
        if backend.config is not None:
            fields[backend.name] = (backend.config, Field(default_factory=backend.config, description=f"{backend.name} build settings"))
    for family in registry.families():
        if family.config is not None:
            fields[family.name] = (family.config | None, Field(None, description=f"{family.name} family settings"))
    return fields


Recipe = create_model("Recipe", __base__=_Recipe, __module__=__name__, **_sections())
Recipe.__doc__ = "A validated recipe: the common keys, plus one section per registered backend and family."


def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML; a megabyte is generous
MAX_RECIPE_NODES = 100_000  # values after YAML aliases are expanded (a "billion laughs" document is refused, not walked)
MAX_RECIPE_DEPTH = 64


def _check_shape(data, path: Path) -> None:
    """Refuse a document pydantic could not walk in bounded time: cyclic aliases, exponential alias expansion, deep nesting."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node, depth: int) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise EdgekitError("the recipe refers to itself (a YAML alias inside its own anchor)", path, "write the value out instead of the alias")
        if depth > MAX_RECIPE_DEPTH:
            raise EdgekitError(f"the recipe is nested more than {MAX_RECIPE_DEPTH} levels deep", path, "see recipes/yolov5n.yaml for the recipe layout")
        active.add(key)
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_RECIPE_NODES:
                raise EdgekitError(f"the recipe expands to more than {MAX_RECIPE_NODES:,} values (YAML aliases)", path, "write the recipe without nested aliases")
        active.discard(key)
        sizes[key] = total
        return total

    size(data, 0)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe; every problem becomes an ``EdgekitError`` naming the key and the file.

    Any bytes give a ``Recipe`` or an ``EdgekitError`` (fuzzed in tests/faults/test_fuzz.py): not UTF-8, not YAML,
    too large, too deep, self-referencing or alias-bombed documents are refused with one line."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError("recipe not found", path, "pass the path of a recipe YAML, e.g. recipes/yolov5n.yaml")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EdgekitError(f"cannot read the recipe ({exc.strerror or exc})", path, "check the file's permissions") from exc
    if len(raw) > MAX_RECIPE_BYTES:
        raise EdgekitError(f"the recipe is {len(raw):,} bytes (at most {MAX_RECIPE_BYTES:,})", path, "pass a recipe YAML, not a data file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EdgekitError(f"the recipe is not UTF-8 text (byte {exc.start})", path, "save the recipe as UTF-8") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise EdgekitError(f"invalid YAML{where}", path, "fix the YAML syntax") from exc
    except (RecursionError, MemoryError) as exc:
        raise EdgekitError("the recipe is nested too deeply to read", path, "see recipes/yolov5n.yaml for the recipe layout") from exc
    if not isinstance(data, dict):
        raise EdgekitError("a recipe must be a YAML mapping", path, "see recipes/yolov5n.yaml")
    _check_shape(data, path)
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
        what = f"bad value for '{key}'" if key else "invalid recipe"
        raise EdgekitError(f"{what}: {err['msg']}"[:500], path, "correct the value (see README: recipe reference)") from exc


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
