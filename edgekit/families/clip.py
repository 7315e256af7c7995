"""The CLIP family: two towers, each exported, quantized, built and timed as its own graph.

``vision``: pixel_values (B, 3, S, S) -> image_embeds (B, E); ``text``: input_ids, attention_mask (B, L) ->
text_embeds (B, E). Int8 targets: vision = static Q/DQ on the weight MatMuls (image calibration), text = dynamic int8
MatMuls, or static Q/DQ calibrated on captions; LayerNorm, Softmax, GELU, the mask path and the patch embedding stay
float. Evaluated by zero-shot classification, image-text retrieval and embedding fidelity to the reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from edgekit import progress
from edgekit.artifacts import sha256_file, write_json_atomic
from edgekit.backends.base import Graph, LazyFeeds, Quantized, TorchSource
from edgekit.config import PathText, Strict
from edgekit.families.base import Evaluation, Family, GraphExport

CHECK_SAMPLES = 4
DEFAULT_TEXTS = ["a photo of a cat.", "a diagram", "two dogs playing in the snow", "a red car"]
OUT_PROJ = r"Linear_out_proj;\d+;$"  # LiteRT tensor names (PyTorch module paths) of the attention output projections


class TextCalibrationSpec(Strict):
    captions: PathText = Field(description="COCO captions JSON; the captions of `images` calibrate the text tower")
    images: PathText | None = Field(None, description="only captions of the images in this folder (keeps evaluation images out)")
    count: int = Field(512, ge=1)


class ZeroShotSpec(Strict):
    labels: PathText = Field(description="CSV with file, class_index and class name columns (images beside it unless `images`)")
    images: PathText | None = None
    templates: list[str] | None = Field(None, description="prompt templates with one '{}' for the class name")
    templates_file: PathText | None = Field(None, description="OpenAI's prompts markdown; used with `templates_section`")
    templates_section: str | None = None
    max_images: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _templates(self) -> ZeroShotSpec:
        if not self.templates and not (self.templates_file and self.templates_section):
            raise ValueError("give `templates`, or `templates_file` with `templates_section`")
        return self


class RetrievalSpec(Strict):
    captions: PathText = Field(description="COCO captions JSON")
    images: list[PathText] = Field(min_length=1, description="image folders; images without captions are skipped")
    max_images: int | None = Field(None, ge=1)


class ClipSpec(Strict):
    """CLIP towers: how each is quantized, what calibrates the text tower, and how the pair is evaluated."""

    vision_int8: Literal["static", "full", "float"] = Field(
        "static", description="vision tower in int8 targets: static Q/DQ on the weight MatMuls, on every float op (full: faster on ORT, "
        "meant with quantization.mode: qat), or kept float")
    text_int8: Literal["dynamic", "static", "float"] = Field(
        "dynamic", description="text tower in int8 targets: dynamic int8 MatMuls (ORT; weight-only int8 on OpenVINO), static Q/DQ on the "
        "weight MatMuls, or float"
    )
    embedding_int8: bool = Field(True, description="int8 text towers also store the token embedding table as int8 rows (4x smaller)")
    smooth_quant: float | None = Field(None, gt=0, lt=1, description="SmoothQuant alpha: migrate activation outliers into LayerNorm-fed weights before static int8")
    context_length: int = Field(77, ge=8)
    text_calibration: TextCalibrationSpec | None = None
    zero_shot: ZeroShotSpec | None = None
    retrieval: RetrievalSpec | None = None
    label_embeddings: bool = Field(True, description="write the zero-shot class embeddings (from the FP32 text tower) as class_embeddings.npy")
    text_batch: int = Field(64, ge=1, description="texts per call when encoding prompts and captions")


class _Towers:
    """The PyTorch tower modules with named inputs and a one-entry dict output: LiteRT's signature names, NHWC pixels."""

    @staticmethod
    def vision(module):
        import torch

        class Vision(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.tower = module

            def forward(self, pixel_values):
                return {"image_embeds": self.tower(pixel_values.permute(0, 3, 1, 2))}

        return Vision().eval()

    @staticmethod
    def text(module):
        import torch

        class Text(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.tower = module

            def forward(self, input_ids, attention_mask):
                return {"text_embeds": self.tower(input_ids, attention_mask)}

        return Text().eval()


class Clip(Family):
    name = "clip"
    config = ClipSpec
    supports_qat = True  # static and full towers, distilled by embedding cosine (only ORT runs the trained graph)
    metrics = ("zero_shot_top1", "zero_shot_top5", "retrieval_mean_recall", "image_embedding_cosine", "text_embedding_cosine",
               "class_embedding_cosine", "zero_shot_top1_agreement", "zero_shot_top5_overlap")

    @classmethod
    def check_recipe(cls, recipe) -> None:
        if not (recipe.model.weights or recipe.model.config):
            raise ValueError("a clip model needs `weights` (a model folder) or `config` (architecture, random weights)")
        if recipe.evaluation is not None:
            raise ValueError("a clip recipe is evaluated by `clip.zero_shot` and `clip.retrieval`, not `evaluation`")
        if recipe.clip is None:
            recipe.clip = ClipSpec()
        c = recipe.clip
        if any(t.precision == "int8" for t in recipe.targets) and c.text_int8 == "static" and c.text_calibration is None:
            raise ValueError("clip.text_int8: static needs clip.text_calibration (captions)")

    # --- model and data ---------------------------------------------------------------------------------------

    def load(self) -> None:
        from edgekit.models.clip.family import ClipFamily

        r = self.recipe
        self.clip = ClipFamily(context_length=r.clip.context_length)
        model = self.clip.load(r.model.weights, r.model.config, r.model.tokenizer, r.model.seed)
        for path in (r.model.weights, r.model.config, r.model.tokenizer):
            self.job.record_input(path)
        self.modules = self.clip.modules(model)
        self.provenance = self.clip.provenance
        with self.job.timer("data"):
            self._load_data()

    def _load_data(self) -> None:
        from edgekit.evaluators.retrieval import load_coco_captions
        from edgekit.models.clip.prompts import load_labelled_images, load_templates
        from edgekit.quantization.calibration import calibration_images

        c, q, job = self.recipe.clip, self.recipe.quantization, self.job
        self.zs_images, self.zs_labels, self.classnames, self.templates = [], None, [], []
        self.rt_images, self.rt_captions, self.rt_index = [], [], None
        self.calib_images, self.calib_texts, self.pixels = [], [], {}
        if c.zero_shot:
            z = c.zero_shot
            images, labels, self.classnames = load_labelled_images(Path(z.labels), Path(z.images) if z.images else None)
            self.zs_images, self.zs_labels = images[: z.max_images], labels[: z.max_images]
            self.templates = list(z.templates) if z.templates else load_templates(Path(z.templates_file), z.templates_section)
            job.record_input(z.labels)
        if c.retrieval:
            rt = c.retrieval
            images, captions, index = load_coco_captions(Path(rt.captions), [Path(p) for p in rt.images])
            keep = len(images) if rt.max_images is None else rt.max_images
            chosen = index < keep
            self.rt_images, self.rt_captions, self.rt_index = images[:keep], [t for t, k in zip(captions, chosen) if k], index[chosen]
            job.record_input(rt.captions)
        if q is not None:
            self.calib_images = calibration_images(q.calibration.images, q.calibration.count, q.calibration.warn_below)
            job.record_samples(str(q.calibration.images), self.calib_images)
        if c.text_calibration:
            tc = c.text_calibration
            if tc.images:
                _, texts, _ = load_coco_captions(Path(tc.captions), [Path(tc.images)])
            else:
                try:
                    texts = [str(a["caption"]).strip() for a in json.loads(Path(tc.captions).read_text(encoding="utf-8"))["annotations"]]
                except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
                    from edgekit.errors import EdgekitError

                    raise EdgekitError(f"not a readable COCO captions json ({type(exc).__name__}: {exc})", tc.captions,
                                       "it needs 'annotations' with a 'caption' each") from None
            self.calib_texts = texts[: tc.count]
            job.record_samples(str(tc.captions), self.calib_texts, "captions")
        from edgekit.imaging import check_image

        for path in dict.fromkeys(self.zs_images + self.rt_images + self.calib_images):  # headers only: a bad image fails before the export
            check_image(path)

    def _check_feeds(self, tower: str) -> list[dict[str, np.ndarray]]:
        if tower == "vision":
            images = (self.rt_images or self.zs_images or self.calib_images)[:CHECK_SAMPLES]
            size = self.clip.image_size
            return [self.clip.image_feed(p) for p in images] or [{"pixel_values": np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)}]
        texts = (self.rt_captions or self.calib_texts or DEFAULT_TEXTS)[: CHECK_SAMPLES * 2]
        return [self.clip.text_feed(texts[i : i + 2]) for i in range(0, len(texts), 2)]

    def graphs(self) -> list[GraphExport]:
        from edgekit.models.clip.family import TOWERS

        return [
            GraphExport(t.name, self.modules[t.name], self.clip.example_inputs(t.name), t.input_names, (t.output_name,), t.dynamic_axes,
                        self._check_feeds(t.name), "transformer")
            for t in TOWERS
        ]

    def settings(self) -> dict:
        return {"model": self.provenance, "clip": self.recipe.clip.model_dump()}

    # --- quantization -----------------------------------------------------------------------------------------

    def calibration(self, graph: str) -> LazyFeeds | None:
        if graph == "vision":
            return LazyFeeds(self.calib_images, self.clip.image_feed) if self.calib_images else None
        return LazyFeeds(self.calib_texts, lambda text: self.clip.text_feed([text])) if self.calib_texts else None

    def quantize(self, graph: Graph) -> None:
        """Vision: static Q/DQ on the weight MatMuls. Text: dynamic int8 MatMuls (per output channel: on real
        all-MiniLM-L6-v2 weights per-tensor gave cosine 0.966, per-channel 0.9945, benchmarks/minilm_int8.py), or
        static Q/DQ calibrated on captions. ``full``: static Q/DQ on every float op, which ``quantization.mode: qat``
        then distils from FP32 (embedding cosine). An int8 text tower also stores its token table as int8 rows."""
        from edgekit.quantization.dynamic import quantize_dynamic_matmul
        from edgekit.quantization.placement import FULL_TRANSFORMER_PLACEMENT
        from edgekit.quantization.transformer_int8 import static_transformer_int8

        c, q, job = self.recipe.clip, self.recipe.quantization, self.job
        mode = c.vision_int8 if graph.name == "vision" else c.text_int8
        graph.int8 = "static" if mode == "full" else mode  # backends with their own quantizer treat both as static
        if mode == "float":
            return
        path = job.stage / f"{graph.name}_int8.onnx"
        with job.timer(f"quantize {graph.name}"):
            if mode in ("static", "full"):
                feeds = graph.calibration
                def choose(model, tensors, placement):
                    with job.timer(f"tune ranges {graph.name}"):
                        return job.choose_ranges(graph, model, tensors, placement)

                placement = FULL_TRANSFORMER_PLACEMENT if mode == "full" else None
                result = static_transformer_int8(graph.fp32, path, feeds.items, feeds.transform, q, job.run.threads, c.smooth_quant,
                                                 {"tower": graph.name}, choose, placement)
                settings = result.settings
                graph.ranges, graph.ranges_settings, graph.ranges_model = result.ranges, result.calibration, result.source
            else:
                settings = quantize_dynamic_matmul(graph.fp32, path, keep_float=q.keep_float.nodes, per_channel=q.per_channel)
        if mode in ("static", "full") and job.wants_qat(graph):
            with job.timer(f"qat {graph.name}"):
                from edgekit.onnx_io import load_onnx, save_onnx

                model, settings["qat_training"] = job.train_qat(graph, load_onnx(path))
                save_onnx(model, path, {"tower": graph.name, "precision": "int8", "quantization": json.dumps(settings, sort_keys=True)})
        if graph.name == "text" and c.embedding_int8:
            from edgekit.onnx_io import load_onnx, save_onnx
            from edgekit.quantization.embedding import quantize_embedding_tables

            model, tables = quantize_embedding_tables(load_onnx(path))
            save_onnx(model, path, {"embedding_tables": json.dumps(tables, sort_keys=True)})
            settings["embedding_tables"] = tables
        graph.quantized["int8"] = Quantized(path, mode, settings)

    def qat_loss(self, graph: str):
        from edgekit.qat.distill import embedding_loss

        return embedding_loss

    def torch_source(self, graph: str) -> TorchSource:
        from edgekit.models.clip.family import TOWERS

        tower = next(t for t in TOWERS if t.name == graph)
        example = self.clip.example_inputs(graph)
        sample = {n: x[:1] for n, x in zip(tower.input_names, example)}  # batch 1; text at the full context length
        if graph == "vision":
            return TorchSource(_Towers.vision(self.modules[graph]), {n: x.permute(0, 2, 3, 1).contiguous() for n, x in sample.items()},
                               tower.input_names, (tower.output_name,), channels_last=tower.input_names, dynamic_patterns=(OUT_PROJ,), fixed_batch=True)
        return TorchSource(_Towers.text(self.modules[graph]), sample, tower.input_names, (tower.output_name,), pad_sequences=True, fixed_batch=True, static_int8=False)

    # --- measurement ------------------------------------------------------------------------------------------

    def _pixels(self, path: Path) -> np.ndarray:
        if path not in self.pixels:
            self.pixels[path] = self.clip.image_feed(path)["pixel_values"]
        return self.pixels[path]

    def encode_images(self, runner, images: list[Path], label: str, batch: int = 16) -> np.ndarray:
        out = []
        for start in progress.track(label, (len(images) + batch - 1) // batch):
            chunk = images[start * batch : (start + 1) * batch]
            out.append(runner.infer({"pixel_values": np.concatenate([self._pixels(p) for p in chunk])})["image_embeds"])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def encode_texts(self, runner, texts: list[str]) -> np.ndarray:
        batch = self.recipe.clip.text_batch
        out = [runner.infer(self.clip.text_feed(texts[i : i + batch]))["text_embeds"] for i in range(0, len(texts), batch)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def evaluate(self, target, runners, reference: Evaluation | None) -> Evaluation:
        """Zero-shot and retrieval embeddings and metrics of one target; fidelity to the reference's embeddings."""
        from edgekit.evaluators.retrieval import retrieval_recall
        from edgekit.evaluators.zero_shot import class_embeddings, topk_accuracy, zero_shot_scores

        out: dict[str, np.ndarray] = {}
        metrics: dict[str, float] = {}
        name = target.name
        if self.zs_images:
            out["class"] = class_embeddings(lambda texts: self.encode_texts(runners["text"], texts), self.classnames, self.templates, self.recipe.clip.text_batch, progress.track)
            out["zs_image"] = self.encode_images(runners["vision"], self.zs_images, f"zero-shot images {name}")
            out["logits"] = zero_shot_scores(out["zs_image"], out["class"])
            metrics.update(topk_accuracy(out["logits"], self.zs_labels))
        if self.rt_images:
            out["rt_image"] = self.encode_images(runners["vision"], self.rt_images, f"retrieval images {name}")
            out["caption"] = self.encode_texts(runners["text"], self.rt_captions)
            metrics.update(retrieval_recall(out["rt_image"], out["caption"], self.rt_index))
        from edgekit.evaluators.bootstrap import clip_samples

        fid = fidelity(reference.outputs if reference else out, out)
        gated = {k: v for k, v in fid.items() if not k.endswith("_min")}  # means and agreement; minima stay in fidelity
        samples = clip_samples(reference.outputs if reference else out, out, self.zs_labels if self.zs_images else None,
                               self.rt_index if self.rt_images else None)  # per-sample values: bootstrap intervals of the budgets
        return Evaluation(metrics={k: round(float(v), 5) for k, v in {**metrics, **gated}.items()}, fidelity=fid, outputs=out, samples=samples)

    def latency_feeds(self) -> dict[str, dict[str, np.ndarray]]:
        """One image, and one caption padded to the full context (the fixed shape a device runs)."""
        image = (self.rt_images or self.zs_images or self.calib_images or [None])[0]
        vision = {"pixel_values": self._pixels(image)} if image else self._check_feeds("vision")[0]
        text = self.clip.text_feed([(self.rt_captions or self.calib_texts or DEFAULT_TEXTS)[0]], trim=False)
        return {"vision": vision, "text": text}

    def finalize(self, reference: Evaluation | None, files) -> None:
        """``class_embeddings.npy`` (C, E) float32 unit rows from the reference text tower, and ``class_embeddings.json``."""
        from edgekit.artifacts import atomic_path

        if not self.recipe.clip.label_embeddings or reference is None or "class" not in reference.outputs:
            return
        path = self.job.stage / "class_embeddings.npy"
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, reference.outputs["class"].astype(np.float32))
        write_json_atomic(self.job.stage / "class_embeddings.json", {
            "classes": self.classnames, "templates": self.templates, "text_tower": self.job.reference_name,
            "shape": list(reference.outputs["class"].shape), "sha256": sha256_file(path), "usage": "logits = image_embeds @ class_embeddings.T",
        })


def fidelity(reference: dict, ours: dict) -> dict[str, float]:
    """Embedding cosines and zero-shot agreement of a target against the reference target (1.0 = identical)."""
    from edgekit.evaluators.zero_shot import prediction_agreement, topk_overlap

    def mean_cos(key: str) -> dict[str, float]:
        a, b = reference.get(key), ours.get(key)
        if a is None or b is None or not len(a):
            return {}
        cos = np.sum(a * b, axis=1)
        return {"mean": float(cos.mean()), "min": float(cos.min())}

    images = [c for c in (mean_cos(k) for k in ("zs_image", "rt_image")) if c]
    out: dict[str, float] = {}
    if images:
        out["image_embedding_cosine"] = float(np.mean([c["mean"] for c in images]))
        out["image_embedding_cosine_min"] = float(min(c["min"] for c in images))
    for key, name in (("caption", "text_embedding_cosine"), ("class", "class_embedding_cosine")):
        if c := mean_cos(key):
            out[name], out[name + "_min"] = c["mean"], c["min"]
    if "logits" in reference and "logits" in ours:
        out["zero_shot_top1_agreement"] = prediction_agreement(reference["logits"], ours["logits"])
        out["zero_shot_top5_overlap"] = topk_overlap(reference["logits"], ours["logits"], 5)
    return out
