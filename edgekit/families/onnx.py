"""The ``onnx`` family: a user's own ONNX model with one image input, no PyTorch module.

``model.weights`` names the ``.onnx`` file; the ``onnx:`` section says how an image becomes the model's input
(size, resize or letterbox, RGB/BGR, scale, mean/std, NCHW/NHWC) and which images (``onnx.images``, never the
calibration folder) measure fidelity and latency. The job imports the file as the graph's raw export (no PyTorch
check; the passes still run and are verified), calibrates on ``quantization.calibration.images`` through the same
preprocessing, and places the default static Q/DQ. Without a PyTorch module, LiteRT targets are "not built".

Evaluated by fidelity to the reference target on ``onnx.images``: output cosine (mean, min), max abs error and,
when an output looks like class scores ((N, C) with C >= 10, trailing 1-dims squeezed), top-1 agreement and top-5
overlap. The graph is quantized and built as a CNN (ONNX Runtime's Conv-island placement, NNCF's CNN path).
Not supported yet: several inputs, non-image inputs, weights stored as external data.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from edgekit import progress
from edgekit.backends.base import Feed, LazyFeeds
from edgekit.config import PathText, Strict
from edgekit.errors import EdgekitError
from edgekit.families.base import Evaluation, Family, GraphExport

CHECK_SAMPLES = 4  # images the fusion passes are verified on
MIN_CLASSES = 10  # an (N, C) output with at least this many columns is read as class scores


class OnnxSpec(Strict):
    """How images become the model's input, and which images measure fidelity and latency."""

    input: str | None = Field(None, description="the image input's name (default: the model's first input)")
    size: tuple[int, int] | None = Field(None, description="network input [H, W] (or 'HxW', or one side); default: the model's static shape")
    fit: Literal["resize", "letterbox"] = Field("resize", description="resize: stretch to HxW; letterbox: keep the aspect ratio, pad with `pad`")
    pad: int = Field(114, ge=0, le=255, description="letterbox padding, in pixel values (0-255)")
    color: Literal["RGB", "BGR"] = Field("RGB", description="channel order the model expects")
    scale: float = Field(1 / 255, gt=0, description="pixel values (0-255) are multiplied by this first (e.g. 1/255, or 1)")
    mean: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="subtracted per channel after scaling (in `color` order)")
    std: tuple[float, float, float] = Field((1.0, 1.0, 1.0), description="divided per channel after the mean")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="layout of the image input")
    images: PathText | None = Field(None, description="folder of images for fidelity and latency (not the calibration folder); "
                                    "without it, seeded random pixels")
    max_images: int = Field(32, ge=1, description="the first N images of `images` (by name)")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value):
        if isinstance(value, int):
            return (value, value)
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
            if not match:
                raise ValueError(f"size {value!r}: write HxW, e.g. 224x224, or [224, 224]")
            return (int(match[1]), int(match[2]))
        return value

    @field_validator("size")
    @classmethod
    def _positive(cls, value):
        if value is not None and min(value) < 1:
            raise ValueError("size must be positive")
        return value

    @field_validator("scale", mode="before")
    @classmethod
    def _fraction(cls, value):
        if isinstance(value, str) and "/" in value:  # "1/255"
            num, _, den = value.partition("/")
            try:
                return float(num) / float(den)
            except (ValueError, ZeroDivisionError) as exc:
                raise ValueError(f"scale {value!r}: write a number or a fraction such as 1/255") from exc
        return value


class ImageInput:
    """The model's image input (name, shape, dtype) and the preprocessing the section describes."""

    def __init__(self, model, spec: OnnxSpec, path: Path) -> None:
        from onnx import helper

        weights = {i.name for i in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in weights]
        if not inputs:
            raise EdgekitError("the ONNX model has no inputs", path, "give an ONNX model that takes an image")
        names = [i.name for i in inputs]
        name = spec.input or names[0]
        if name not in names:
            raise EdgekitError(f"onnx.input {name!r} is not an input of the model (inputs: {', '.join(names)})", path, "correct onnx.input")
        others = [n for n in names if n != name]
        if others:
            raise EdgekitError(f"the onnx family feeds one image input; the model also takes {', '.join(others)}", path,
                               "export the model with its image as the only input")
        tensor = next(i for i in inputs if i.name == name).type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if len(dims) != 4:
            raise EdgekitError(f"input {name!r} has rank {len(dims)}; an image input is 4-D ({spec.layout})", path, "set onnx.layout, or give an image model")
        h, w, c = (dims[2], dims[3], dims[1]) if spec.layout == "NCHW" else (dims[1], dims[2], dims[3])
        if c not in (None, 3):
            raise EdgekitError(f"input {name!r} has {c} channels in {spec.layout} ({dims}); the onnx family feeds 3-channel images", path,
                               "check onnx.layout (NCHW or NHWC)")
        size = spec.size or (h, w)
        if None in size:
            raise EdgekitError(f"input {name!r} has no static height and width ({dims})", path, "set onnx.size: HxW")
        if None not in (h, w) and (h, w) != tuple(size):
            raise EdgekitError(f"onnx.size {size[0]}x{size[1]} differs from the model's static input {h}x{w}", path, f"set onnx.size: {h}x{w}, or remove it")
        self.name, self.dims, self.batch_dim, self.spec = name, dims, dims[0], spec
        self.size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        self.output_names = tuple(o.name for o in model.graph.output)

    def pixels(self, path: Path) -> np.ndarray:
        """One image file as (H, W, 3) RGB pixel values 0-255 at the network size (resized or letterboxed)."""
        from PIL import Image

        from edgekit.models.yolo.processing import letterbox, read_image

        image = read_image(path)
        h, w = self.size
        if self.spec.fit == "resize":
            return np.asarray(image.resize((w, h), Image.BILINEAR), dtype=np.float32)
        return letterbox(image, (h, w), self.spec.pad)[0].astype(np.float32)

    def feed(self, pixels: np.ndarray) -> Feed:
        """(H, W, 3) RGB pixel values -> the model's feed: channel order, scale, mean/std, layout, batch 1, dtype."""
        s = self.spec
        x = pixels[..., ::-1] if s.color == "BGR" else pixels
        x = (x * np.float32(s.scale) - np.asarray(s.mean, np.float32)) / np.asarray(s.std, np.float32)
        x = x.transpose(2, 0, 1) if s.layout == "NCHW" else x
        return {self.name: np.ascontiguousarray(x[None]).astype(self.dtype, copy=False)}

    def image_feed(self, path: Path) -> Feed:
        return self.feed(self.pixels(path))

    def random_feed(self, seed: int) -> Feed:
        h, w = self.size
        return self.feed(np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.float32))

    def settings(self) -> dict:
        return {"name": self.name, "shape": [d if d is not None else "dynamic" for d in self.dims], "dtype": str(self.dtype), "size": list(self.size)}


def class_scores(value: np.ndarray) -> np.ndarray | None:
    """``value`` as (N, C) class scores when it looks like them (2-D after squeezing trailing 1-dims, C >= 10)."""
    a = np.asarray(value)
    if a.ndim < 2:
        return None
    rest = [d for d in a.shape[1:] if d != 1]
    if len(rest) != 1 or rest[0] < MIN_CLASSES or not np.issubdtype(a.dtype, np.floating):
        return None
    return a.reshape(a.shape[0], rest[0])


def fidelity(reference: list[dict[str, np.ndarray]], outputs: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Output cosine (mean and min over images and outputs), max abs error and, for the first output that looks like
    class scores, top-1 agreement and top-5 overlap with ``reference``."""
    from edgekit.evaluators.fidelity import compare_outputs
    from edgekit.evaluators.zero_shot import prediction_agreement, topk_overlap

    if len(reference) != len(outputs) or not reference:
        raise ValueError(f"need equally many reference and candidate outputs (got {len(reference)} and {len(outputs)})")
    rows = [m for r, o in zip(reference, outputs) for m in compare_outputs(r, o).values()]
    cosines = [m["cosine"] for m in rows]
    out = {"output_cosine": float(np.mean(cosines)), "output_cosine_min": float(np.min(cosines)),
           "max_abs_error": float(max(m["max_abs"] for m in rows)), "mean_abs_error": float(np.mean([m["mean_abs"] for m in rows]))}
    for name in reference[0]:
        if class_scores(reference[0][name]) is None:
            continue
        a = np.concatenate([class_scores(r[name]) for r in reference])
        b = np.concatenate([class_scores(o[name]) for o in outputs])
        out["top1_agreement"] = prediction_agreement(a, b)
        out["top5_overlap"] = topk_overlap(a, b, 5)
        break
    return out


class OnnxModel(Family):
    name = "onnx"
    config = OnnxSpec
    # top1_agreement / top5_overlap only for class-score outputs; max_abs_error is lower-is-better (budget it with max_value)
    metrics = ("output_cosine", "top1_agreement", "top5_overlap", "max_abs_error")

    @classmethod
    def check_recipe(cls, recipe) -> None:
        weights = recipe.model.weights
        if weights and "$" in weights:
            raise ValueError(f"model.weights {weights!r}: an environment variable in it is not set")
        if not weights or not weights.lower().endswith(".onnx"):
            raise ValueError(f"an onnx model needs `weights`: the path of its .onnx file (got {weights!r})")
        if not Path(weights).is_file():
            raise ValueError(f"model.weights {weights!r}: no such file")
        if recipe.evaluation is not None:
            raise ValueError("an onnx recipe is evaluated by fidelity to the reference on `onnx.images`, not `evaluation`")
        if recipe.onnx is None:
            recipe.onnx = OnnxSpec()

    # --- model and data ---------------------------------------------------------------------------------------

    def load(self) -> None:
        import onnx

        from edgekit.onnx_io import load_onnx
        from edgekit.quantization.calibration import IMAGE_SUFFIXES, calibration_images

        r, job, spec = self.recipe, self.job, self.recipe.onnx
        self.path = Path(r.model.weights)
        job.record_input(self.path)
        try:
            model = onnx.load(str(self.path), load_external_data=False)
        except Exception:
            load_onnx(self.path)  # the one-line error for a missing, truncated or invalid file
            raise
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            raise EdgekitError("ONNX models with external data (weights in files beside the .onnx) are not supported yet", self.path,
                               "save the model with its weights inside (onnx.save(model, path), under 2 GB)")
        self.input = ImageInput(model, spec, self.path)
        fixed = self.input.batch_dim
        if fixed is not None and (fixed != 1 or r.model.batch > 1):
            raise EdgekitError(f"the model's batch dimension is fixed at {fixed} (model.batch: {r.model.batch}); images are fed one at a time", self.path,
                               "give a model with batch 1 or a dynamic batch dimension (and model.batch: 1 for batch 1)")
        q = r.quantization
        self.calib_images: list[Path] = []
        if q is not None and any(t.quantized for t in r.targets):
            self.calib_images = calibration_images(q.calibration.images, q.calibration.count, q.calibration.warn_below)
            job.record_samples(str(q.calibration.images), self.calib_images)
        self.images: list[Path] = []
        if spec.images:
            folder = Path(spec.images)
            if not folder.is_dir():
                raise EdgekitError("onnx.images folder not found", folder, "set onnx.images to a folder of images")
            self.images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[: spec.max_images]
            if not self.images:
                raise EdgekitError("onnx.images holds no images", folder, "put a few representative images in it")
            job.record_samples(str(folder), self.images)
        self._first: list[Feed] = []

    def samples(self) -> LazyFeeds:
        """The fidelity inputs: ``onnx.images`` preprocessed on demand, else ``max_images`` seeded random images."""
        if self.images:
            return LazyFeeds(self.images, self.input.image_feed)
        return LazyFeeds(list(range(self.recipe.onnx.max_images)), self.input.random_feed)

    def first_samples(self) -> list[Feed]:
        """The first few samples, kept: the passes' verification feeds and the latency feed."""
        if not self._first:
            self._first = list(self.samples()[:CHECK_SAMPLES])
        return self._first

    def graphs(self) -> list[GraphExport]:
        i = self.input
        return [GraphExport("model", None, (), (i.name,), i.output_names, None, self.first_samples(), "cnn", onnx=self.path)]

    def settings(self) -> dict:
        return {"onnx": {**self.recipe.onnx.model_dump(), "input": self.input.settings(), "source": str(self.path)}}

    # --- quantization -----------------------------------------------------------------------------------------

    def float_nodes(self, graph: str, model) -> tuple[list[str], list[str] | None]:
        """``keep_float.nodes`` (names or fnmatch patterns) resolved to the fused graph's node names, so every
        backend gets exact names; NNCF (which takes no op types) also ignores the nodes of ``keep_float.op_types``."""
        from edgekit.quantization.placement import matches

        q = self.recipe.quantization
        if q is None:
            return [], None
        nodes = [n.name for n in model.graph.node if matches(n.name, q.keep_float.nodes)]
        unmatched = [p for p in q.keep_float.nodes if not any(matches(n, [p]) for n in nodes)]
        if unmatched:
            progress.log(f"[yellow]quantization.keep_float.nodes: {', '.join(unmatched)} match no node of the fused graph[/] (renamed or fused away?)")
        by_op = [n.name for n in model.graph.node if n.op_type in q.keep_float.op_types and n.name not in nodes]
        return nodes, (nodes + by_op if by_op else None)

    def calibration(self, graph: str) -> LazyFeeds | None:
        return LazyFeeds(self.calib_images, self.input.image_feed) if self.calib_images else None

    # --- measurement ------------------------------------------------------------------------------------------

    def evaluate(self, target, runners, reference: Evaluation | None) -> Evaluation:
        runner, samples = runners["model"], self.samples()
        outputs = [runner.infer(samples[i]) for i in progress.track(f"fidelity {target.name}", len(samples))]
        fid = fidelity(reference.outputs if reference else outputs, outputs)
        metrics = {k: round(float(fid[k]), 6) for k in self.metrics if k in fid}
        notes = [] if self.images else [f"no onnx.images: fidelity measured on {len(samples)} random images"]
        from edgekit.evaluators.bootstrap import output_fidelity_samples

        samples = output_fidelity_samples(reference.outputs if reference else outputs, outputs)  # bootstrap intervals of the budgets
        return Evaluation(metrics=metrics, fidelity=fid if reference else None, notes=notes, outputs=outputs, samples=samples)

    def latency_feeds(self) -> dict[str, Feed]:
        return {"model": self.first_samples()[0]}
