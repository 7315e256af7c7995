"""The YOLO family: one graph (``images`` -> ``output0``), COCO mAP on the recipe's evaluation set, NMS graphs.

The head's decode (grid, anchors, strides, the final concat) stays float in the shared spec: it mixes pixel
coordinates with probabilities under one tensor. NNCF ignores the whole head (its 1x1 convolutions too, as
Ultralytics' OpenVINO export does); LiteRT converts a module whose boxes and scores are separate outputs, so they
never share one int8 scale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.artifacts import sha256_bytes, sha256_file
from edgekit.backends.base import AccuracyCheck, LazyFeeds, TorchSource
from edgekit.errors import EdgekitError
from edgekit.families.base import Evaluation, Family, GraphExport

SAMPLE_COUNT = 8  # real images whose raw outputs every target is compared on (fidelity)


class SplitDetections:
    """Wraps a YOLO module so it returns ``(boxes, scores)`` instead of one concatenated tensor."""

    def __new__(cls, model, channel_axis: int):
        import torch

        class _SplitDetections(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x):
                y = self.model(x)
                return y.narrow(channel_axis, 0, 4), y.narrow(channel_axis, 4, y.shape[channel_axis] - 4)

        return _SplitDetections().eval()


def litert_float_patterns(anchor_based: bool, head_index: int) -> list[str]:
    """TFLite tensor-name patterns of the ops kept float: the head's decode and the output split. TFLite tensor names
    carry the PyTorch module path: the head's own ops (not its convs) are ``...Detect_<i>;<n>``, the split ops
    ``..._SplitDetections_...;<n>``, the outputs ``serving_default_*``."""
    head = "Detect" if anchor_based else "DetectV8"
    return [rf".*\.{head}_{head_index};.*", r".*_SplitDetections[^/]*;.*", r"serving_default_.*"]


def coco_validation_fn(detector, annotations: str | Path) -> Callable[[Any, Iterable], float]:
    """``validate(runner, items) -> mAP50-95`` for NNCF's accuracy control on labelled images; items are ``(image_id, path)``."""
    from edgekit.evaluators.coco import coco_category_ids, evaluate_coco
    from edgekit.models.yolo.processing import to_coco

    category_ids = coco_category_ids(annotations)

    def validate(runner, items: Iterable) -> float:
        detections: list[dict] = []
        image_ids: list[int] = []
        for image_id, path in items:
            feed, meta = detector.preprocess(path)
            detections.extend(to_coco(detector.postprocess(runner.infer(feed), meta), image_id, category_ids))
            image_ids.append(int(image_id))
        return float(evaluate_coco(detections, annotations, image_ids).metrics["mAP50-95"])

    return validate


class Yolo(Family):
    name = "yolo"
    metrics = ("mAP50-95", "mAP50")
    supports_qat = True
    qat_reaches = ("onnxruntime", "tensorrt", "tflite", "openvino")

    @classmethod
    def check_recipe(cls, recipe) -> None:
        if not recipe.model.weights:
            raise ValueError("a yolo model needs `weights`")
        if any(t.accuracy_control for t in recipe.targets) and (recipe.evaluation is None or "mAP50-95" not in recipe.budgets):
            raise ValueError("accuracy_control needs an evaluation dataset and a mAP50-95 budget (max_drop) to hold")

    def preflight(self) -> None:
        """A bad evaluation dataset or image fails here, in a second, before the export: the annotation file (parses,
        categories, 4-number bboxes, ground truth of a listed category on the evaluated images), its image files (present
        unless ``allow_missing_images``; headers readable and under Pillow's bomb limit), the calibration and sample images."""
        import warnings

        from edgekit.evaluators.coco import coco_images, require_ground_truth
        from edgekit.imaging import check_image
        from edgekit.quantization.calibration import calibration_images

        r = self.recipe
        files: list[Path] = []
        if r.evaluation:
            ev = r.evaluation
            items = coco_images(ev.dataset.annotations, ev.dataset.images, ev.dataset.allow_missing_images).items[: ev.max_images or None]
            require_ground_truth(ev.dataset.annotations, [i for i, _ in items])
            files += [p for _, p in items]
        q = r.quantization
        chosen_on: list[Path] = []  # calibration and tuning images: never evaluation images
        if q is not None and any(t.quantized for t in r.targets):
            with warnings.catch_warnings():  # load() picks them again and warns then
                warnings.simplefilter("ignore")
                chosen_on = calibration_images(q.calibration.images, q.calibration.count, q.calibration.warn_below) + self.tuning_files()
        for path in dict.fromkeys(files + chosen_on + self._sample_files()):
            check_image(path)
        if files and chosen_on:
            from edgekit.tuning.proxy import check_disjoint

            check_disjoint(dict.fromkeys(chosen_on), files, "calibration or tuning")

    def load(self) -> None:
        from edgekit.export.onnx_export import fuse_batchnorm
        from edgekit.models.yolo.family import YoloFamily
        from edgekit.quantization.calibration import calibration_images

        r = self.recipe
        self.detector = YoloFamily(input_size=r.model.input_size)
        self.detector.validate_input_size(self.job.recipe_path)
        self.module = self.detector.load_torch(r.model.weights)
        self.job.record_input(r.model.weights)
        if r.evaluation:
            from edgekit.evaluators.coco import coco_category_ids

            categories = len(coco_category_ids(r.evaluation.dataset.annotations))
            if self.detector.num_classes not in (None, categories):
                raise EdgekitError(f"the model predicts {self.detector.num_classes} classes but the evaluation annotations list {categories} categories "
                                   "(class i is scored as the i-th category id)", r.evaluation.dataset.annotations,
                                   "evaluate with the annotations of the dataset the model was trained on")
        self.fused = fuse_batchnorm(self.module)
        q = r.quantization
        self.calib_images: list[Path] = []
        if q is not None and any(t.quantized for t in r.targets):
            self.calib_images = calibration_images(q.calibration.images, q.calibration.count, q.calibration.warn_below)
            self.job.record_samples(str(q.calibration.images), self.calib_images)
        self._samples: list[dict[str, np.ndarray]] = []

    def _sample_files(self) -> list[Path]:
        """The first few image files (by name) of the evaluation folder, else the calibration folder; [] for none."""
        from edgekit.quantization.calibration import IMAGE_SUFFIXES

        r = self.recipe
        folder = Path(r.evaluation.dataset.images) if r.evaluation else Path(r.quantization.calibration.images) if r.quantization else None
        if folder is None or not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:SAMPLE_COUNT]

    def samples(self) -> list[dict[str, np.ndarray]]:
        """A few real, preprocessed images (evaluation images, else calibration images), read once per run."""
        if not self._samples:
            r, d = self.recipe, self.detector
            files = self._sample_files()
            if not files:
                shape = (r.model.batch, 3, d.input_size, d.input_size)
                self._samples = [{d.input_name: np.random.default_rng(0).random(shape, dtype=np.float32)}]
            else:
                self._samples = [d.preprocess(p)[0] for p in files]
        return self._samples

    def graphs(self) -> list[GraphExport]:
        import torch

        r, d = self.recipe, self.detector
        names = (d.input_name, d.output_name)
        dynamic = {n: {0: "batch"} for n in names} if r.export.dynamic_batch else None
        example = (torch.zeros(r.model.batch, 3, r.model.input_size, r.model.input_size),)
        return [GraphExport("model", self.fused, example, names[:1], names[1:], dynamic, self.samples()[:4], "cnn", check_module=self.module)]

    def float_nodes(self, graph: str, model) -> tuple[list[str], list[str] | None]:
        """The shared spec keeps the head's decode float; NNCF the whole head. Measured on YOLOv5n (158 images): head
        float +0.09 pt at 15.5 ms; decode only float -0.22 pt at 15.2 ms (ORT FP32 27 ms, interleaved)."""
        q = self.recipe.quantization
        if q is None or not q.keep_float.head:
            return (list(q.keep_float.nodes) if q else []), None
        return self.detector.float_nodes(model) + q.keep_float.nodes, self.detector.head_nodes(model) + list(q.keep_float.nodes)

    def calibration(self, graph: str) -> LazyFeeds | None:
        return LazyFeeds(self.calib_images, lambda p: self.detector.preprocess(p)[0]) if self.calib_images else None

    def tuning_files(self) -> list[Path]:
        """The images that choose settings: ``quantization.tuning.images`` (first ``count``), else the calibration images."""
        from edgekit.quantization.calibration import calibration_images

        q = self.recipe.quantization
        if q is None:
            return []
        folder = q.tuning.images or q.calibration.images
        return calibration_images(folder, q.tuning.count or q.calibration.count, warn_below=1)

    def evaluation_files(self) -> list[Path]:
        from edgekit.evaluators.coco import coco_images

        ev = self.recipe.evaluation
        if ev is None:
            return []
        return [p for _, p in coco_images(ev.dataset.annotations, ev.dataset.images, ev.dataset.allow_missing_images).items[: ev.max_images or None]]

    def tuning_scorer(self, graph, purpose: str = "search"):
        """On the tuning images, label-free. ``ranges``: the raw output cosine against FP32 (it picked the candidate with
        the smallest true drop on held-out labelled halves more often than the detection proxies: mean regret 0.11 pt
        against 0.26 for pseudo_map@0.5, ``benchmarks/proxy_correlation.py``; pseudo mAP rewards percentile 99.999, which
        keeps FP32's confident boxes but loses the low-score tail mAP integrates). ``search``: pseudo mAP50-95 against
        FP32's detections (``DetectionScorer``), whose loss a float group visibly recovers."""
        from edgekit.tuning.scorer import DetectionScorer, OutputCosineScorer

        if purpose == "ranges":
            return OutputCosineScorer(graph.fp32, self.tuning_files(), self.job.run.threads, graph.calibration.transform)
        return DetectionScorer(graph.fp32, self.tuning_files(), self.detector, self.job.run.threads)

    def qat_loss(self, graph: str):
        from edgekit.qat.distill import detection_loss

        return detection_loss

    def tuning_sets(self) -> dict[str, Any]:
        from edgekit.tuning.proxy import TuningSet

        tuning, evaluation = self.tuning_files(), self.evaluation_files()
        record = TuningSet.create(tuning, evaluation).to_dict() if evaluation else {"tuning_images": len(tuning)}
        digest = "".join(sha256_file(p) for p in tuning)
        used = any(t.accuracy_control for t in self.recipe.targets) and self.recipe.openvino.accuracy_control_data == "evaluation"
        return {**record, "tuning_sha256": sha256_bytes(digest.encode()), "labels": "none: scored against FP32's detections",
                "evaluation_used_for_choices": used}

    def torch_source(self, graph: str) -> TorchSource:
        import torch

        r, d = self.recipe, self.detector
        q = r.quantization
        kept = litert_float_patterns(d.anchor_based, d.head_index) if q is not None and q.keep_float.head else []
        return TorchSource(
            module=SplitDetections(self.fused, -1 if d.anchor_based else 1),
            sample={d.input_name: torch.zeros(r.model.batch, r.model.input_size, r.model.input_size, 3)},
            input_names=(d.input_name,), output_names=("boxes", "scores"), channels_last=(d.input_name,),
            wrap_channels_last=True, float_patterns=tuple(kept),
        )

    def accuracy(self, graph: str) -> AccuracyCheck | None:
        """NNCF accuracy control's check: by default label-free on the tuning images, scored as ``quantization.search``
        scores (pseudo mAP50-95 against FP32's detections, the search's first ``search.images``), so that NNCF and the
        search decide on the same data and metric and the evaluation images decide nothing; ``openvino.accuracy_control_data:
        evaluation`` validates on the labelled evaluation images instead (the old, optimistic route)."""
        from edgekit.evaluators.coco import load_coco_images
        from edgekit.tuning.scorer import accuracy_check

        r, job = self.recipe, self.job
        if not any(t.accuracy_control for t in r.targets):
            return None
        spec, q = r.openvino, r.quantization
        if spec.accuracy_control_data == "tuning":
            max_loss = spec.accuracy_control_max_loss_pt or (q.search.max_loss_pt if q is not None and q.search else None)
            if max_loss is None:
                raise EdgekitError("accuracy_control on the tuning images needs a tuning budget", job.recipe_path,
                                   "set openvino.accuracy_control_max_loss_pt (pseudo-mAP points, like quantization.search.max_loss_pt) "
                                   "or openvino.accuracy_control_data: evaluation")
            scorer = job.tuning_scorer(job.graphs[graph]).subset(q.search.images if q.search else None)
            scorer = scorer.subset(spec.accuracy_control_max_images)
            job.tuning_record(job.graphs[graph])["accuracy_control"] = {"backend": "openvino", "metric": scorer.description,
                                                                       "tuning_images": len(scorer.samples), "max_loss_pt": max_loss}
            return accuracy_check(scorer, max_loss, lambda path: self.detector.preprocess(path)[0])
        if r.evaluation is None:
            raise EdgekitError("accuracy_control_data: evaluation needs an evaluation dataset", job.recipe_path,
                               "add evaluation.dataset or use openvino.accuracy_control_data: tuning")
        max_drop = r.budgets["mAP50-95"].max_drop
        if max_drop is None:
            raise EdgekitError("accuracy_control needs budgets.mAP50-95.max_drop (absolute)", job.recipe_path, "set budgets: {mAP50-95: {max_drop: 0.005}}")
        ev = r.evaluation
        items = load_coco_images(ev.dataset.annotations, ev.dataset.images, ev.dataset.allow_missing_images)[: spec.accuracy_control_max_images or None]
        return AccuracyCheck("mAP50-95 (evaluation images)", max_drop, items, lambda item: self.detector.preprocess(item[1])[0],
                             coco_validation_fn(self.detector, ev.dataset.annotations))

    def evaluate(self, target, runners, reference: Evaluation | None) -> Evaluation:
        from edgekit import progress
        from edgekit.evaluators.detection import evaluate_detector, raw_outputs
        from edgekit.evaluators.fidelity import summarize_fidelity

        runner, d, r = runners["model"], self.detector, self.recipe
        outputs = [d.join_outputs(o) for o in raw_outputs(runner, self.samples())]
        result = Evaluation(outputs=outputs, fidelity=summarize_fidelity(reference.outputs, outputs) if reference else None)
        if r.evaluation:
            ev = r.evaluation
            coco = evaluate_detector(
                runner, d, ev.dataset.images, ev.dataset.annotations, max_images=ev.max_images, conf=ev.conf_threshold,
                iou=ev.iou_threshold, max_det=ev.max_detections, progress=progress.track, label=f"evaluate {target.name}",
                allow_missing=ev.dataset.allow_missing_images,
            )
            result.metrics = {k: round(float(v), 5) for k, v in coco.metrics.items()}
            result.metrics["images_evaluated"] = float(coco.num_images)
            result.per_class_ap = {k: round(float(v), 5) for k, v in coco.per_class_ap.items()}
            result.notes += coco.notes
            if coco.records is not None:  # per-image match records: bootstrap intervals of the mAP budgets
                result.samples = {name: coco.records.metric(name) for name in ("mAP50-95", "mAP50", "mAP75")}
        return result

    def latency_feeds(self) -> dict[str, dict[str, np.ndarray]]:
        return {"model": self.samples()[0]}

    def finalize(self, reference, files) -> None:
        """``*_nms.onnx`` graphs with NMS inside (detections out), next to the FP32 and INT8 ONNX models."""
        from edgekit.models.yolo.nms_graph import append_nms
        from edgekit.onnx_io import load_onnx, save_onnx

        e = self.recipe.export
        if not e.nms_in_graph:
            return
        graph = self.job.graphs["model"]
        for path in [graph.fp32] + [f.path for f in graph.quantized.values()]:
            model = append_nms(load_onnx(path), e.nms_conf_threshold, e.nms_iou_threshold, e.nms_max_detections, self.detector.anchor_based)
            save_onnx(model, path.with_name(path.stem + "_nms.onnx"), {"nms": f"conf {e.nms_conf_threshold}, iou {e.nms_iou_threshold}, max {e.nms_max_detections} per image"})

    @classmethod
    def estimate_memory_bytes(cls, recipe) -> int:
        """Peak RSS of ``edgekit export``: 450 MiB + 1.7 KiB per input pixel per batch image.

        Measured (``/usr/bin/time -v``, maximum resident set) on the tests/faults/tiny.py recipe (real YOLOv5n, 8
        calibration + 8 evaluation images, onnxruntime fp32 + int8, percentile calibration), 2 cores, at input sizes
        128 / 320 / 640 / 960: 471 / 550 / 895 / 1,716 MiB; this line predicts 477 / 620 / 1,130 / 1,980 MiB (slope from
        the 640 -> 960 step, the steepest: it never under-estimates what was measured). Calibration streams one image at
        a time, so the calibration count does not enter; at 4,096 px the estimate is 27.6 GiB."""
        m = recipe.model
        return int(450 * 2**20 + 1.7 * 1024 * m.input_size * m.input_size * m.batch)
