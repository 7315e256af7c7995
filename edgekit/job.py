"""The one job, written once for every family and backend:

recipe -> the family's graphs exported to ONNX, checked against PyTorch, fused and verified -> one calibration pass
per graph whose ranges serve every placement -> quantized forms -> one build per graph x target -> evaluate every
built target, then time them all round-robin -> typed report.

Everything is built in a staging folder beside ``--out`` and renamed into place only when the whole run
succeeded, so a failed run never leaves a half-built model or report behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit import progress, registry
from edgekit.artifacts import sha256_bytes, sha256_file, write_json_atomic
from edgekit.backends.base import Backend, Built, Graph, Quantized, Run, file_name
from edgekit.errors import EdgekitError, environment_error
from edgekit.families.base import Evaluation, Family, GraphExport
from edgekit.onnx_io import load_onnx, save_onnx
from edgekit.recipe import Recipe
from edgekit.reports.schema import Component, LatencyMs, Report, Variant
from edgekit.targets import Target, reference_target

LATENCY_KEYS = ("median", "p90", "p99", "min", "mean")


def latency_ms(stats) -> LatencyMs:
    """The report's latency record of ``LatencyStats`` (milliseconds, 3 decimals)."""
    return LatencyMs(**{k: round(getattr(stats, k), 3) for k in LATENCY_KEYS}, samples=[round(x, 3) for x in getattr(stats, "samples_ms", [])])


def versions() -> dict[str, str]:
    """edgekit's and every runtime's version, for each variant's manifest."""
    from edgekit.profiling.device import device_fingerprint

    return {"edgekit": edgekit.__version__, **device_fingerprint()["versions"]}


class Job:
    """The state of one run: recipe, staging folder, the family, its graphs and what each stage recorded."""

    def __init__(self, recipe: Recipe, recipe_path: Path, stage: Path) -> None:
        self.recipe, self.recipe_path, self.stage = recipe, recipe_path, stage
        self.run = Run(recipe, stage, progress.track)
        self.timings: dict[str, float] = {}
        self.inputs: dict[str, str] = {}  # input (file, or folder with its count) -> sha256
        self.graph_settings: dict[str, dict[str, Any]] = {}  # graph -> {"export", "passes"}
        self.graphs: dict[str, Graph] = {}
        self.deferred_searches: dict[str, list[Callable[[], Any]]] = {}  # backend -> its searches, run just before its build
        self.family: Family = registry.family(recipe.model.family)(self)

    # --- bookkeeping ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[None]:
        progress.log(f"[bold]{name}[/]")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 3)

    def record_input(self, path: str | Path | None) -> None:
        if path and Path(path).is_file():
            self.inputs[str(path)] = sha256_file(path)

    def record_samples(self, label: str, samples: list, unit: str = "images") -> None:
        """A folder's chosen files (or texts) as one input entry: its label, count and one hash over them."""
        digest = "".join(sha256_file(p) for p in samples) if unit == "images" else "\n".join(samples)
        self.inputs[f"{label} ({len(samples)} {unit})"] = sha256_bytes(digest.encode())

    @staticmethod
    def _label(graph: str, stage: str) -> str:
        """A stage's timer name: ``export`` for a single-graph family, ``export vision`` for a graph of several."""
        return stage if graph == "model" else f"{stage} {graph}"

    # --- stages -----------------------------------------------------------------------------------------------

    def export(self, spec: GraphExport) -> Graph:
        """Export one graph, check it against PyTorch on real inputs, run and verify the fusion passes."""
        from edgekit.export import check_against_torch, export_module
        from edgekit.passes import fuse_graph

        r, name = self.recipe, spec.name
        raw, fp32 = self.stage / f"{name}_fp32_raw.onnx", self.stage / f"{name}_fp32.onnx"
        single = name == "model"
        with self.timer(self._label(name, "export")):
            if spec.onnx is not None:  # an existing ONNX model (the onnx family): imported as the raw export, no PyTorch check
                self.record_input(spec.onnx)
                from edgekit.export.onnx_import import import_onnx

                check = import_onnx(spec.onnx, raw, r.export.opset)
            else:
                export_module(spec.module, spec.example_inputs, raw, r.export.opset, spec.input_names, spec.output_names, spec.dynamic_axes)
                check = check_against_torch(spec.check_module or spec.module, raw, spec.check_feeds, r.export.tolerance)
        with self.timer(self._label(name, "fuse")):
            fused, record = fuse_graph(load_onnx(raw), list(r.export.passes), r.export.simplify, spec.check_feeds, r.export.tolerance, name)
            save_onnx(fused, fp32, {"edgekit_version": edgekit.__version__, "precision": "fp32", **({} if single else {"graph": name})})
        if not self.family.keep_raw:
            raw.unlink()
        self.graph_settings[name] = {"export": {**r.export.model_dump(), "check": check.to_dict()}, "passes": record}
        graph = Graph(name, fp32, spec.kind)
        graph.input_sizes = {n: [int(d) for d in x.shape] for n, x in zip(spec.input_names, spec.example_inputs) if hasattr(x, "shape")}
        self.graphs[name] = graph
        return graph

    def prepare(self, graph: Graph) -> None:
        """The family's float scope, calibration feeds, PyTorch source and accuracy check of one graph."""
        model = load_onnx(graph.fp32)
        graph.float_nodes, graph.backend_float_nodes = self.family.float_nodes(graph.name, model)
        q = self.recipe.quantization
        graph.float_ops = list(q.keep_float.op_types) if q else []
        graph.calibration = self.family.calibration(graph.name)
        graph.torch = self.family.torch_source(graph.name)
        graph.accuracy = self.family.accuracy(graph.name)

    def static_qdq(self, graph: Graph) -> None:
        """Static Q/DQ of ``graph`` (ORT placement) from one calibration pass that also covers the tensors of every
        other placement an int8 target needs (NNCF's collect-statistics-once): backends place the same ranges."""
        from edgekit.quantization.placement import ORT_PLACEMENT
        from edgekit.quantization.ptq import quantize_static, tensors_for_placements

        q, feeds = self.recipe.quantization, graph.calibration
        if feeds is None:
            raise EdgekitError(f"no calibration samples for the {graph.name} graph", self.recipe_path, "set quantization.calibration.images")
        placements = [ORT_PLACEMENT, *(p for p in self.target_placements(graph) if p != ORT_PLACEMENT)]
        fp32 = load_onnx(graph.fp32)
        tensors = tensors_for_placements(fp32, placements, graph.float_nodes, graph.float_ops)
        method, percentile = q.method, q.percentile
        if method == "auto":
            with self.timer(self._label(graph.name, "tune ranges")):
                method, percentile = self.choose_ranges(graph, fp32, tensors)
        if q.search is not None and q.search.enabled:
            with self.timer(self._label(graph.name, "search")):
                self.search_float_groups(graph, fp32, tensors, method, percentile)
        with self.timer(self._label(graph.name, "quantize")):
            result = quantize_static(
                fp32, feeds.items, preprocess=feeds.transform, method=method, percentile=percentile, per_channel=q.per_channel,
                float_nodes=graph.float_nodes, float_ops=graph.float_ops, threads=self.run.threads, progress=progress.track, also_calibrate=tensors,
                reduce_range=q.reduce_range_here(),
            )
        if q.bias_correction:
            with self.timer(self._label(graph.name, "bias correction")):
                self.bias_correct(graph, fp32, result)
        if self.wants_qat(graph):
            with self.timer(self._label(graph.name, "qat")):
                self.qat(graph, result)
        path = self.stage / f"{graph.name}_int8.onnx"
        spec_settings = result.spec.settings
        save_onnx(result.model, path, {"edgekit_version": edgekit.__version__, "precision": "int8", "quantization": json.dumps(spec_settings, sort_keys=True)})
        write_json_atomic(self.stage / ("quant_spec.json" if graph.single else f"{graph.name}_quant_spec.json"), result.spec.to_dict())
        calibration = {k: spec_settings[k] for k in ("method", "percentile", "per_channel", "calibration_images", "calibration_key")}
        settings = {**q.model_dump(), **spec_settings, "from_cache": result.calibration.from_cache}
        graph.quantized["int8"] = Quantized(path, "static", settings, calibration)
        graph.ranges, graph.ranges_settings = dict(result.calibration.ranges), calibration
        graph.spec_tensors = frozenset(result.spec.activations)
        graph.int8 = "static"
        if "qat_training" in spec_settings:
            self.carry_qat(graph, result.model)

    def target_placements(self, graph: Graph) -> list:
        """The Q/DQ placements the recipe's int8 targets need for ``graph``, each once, in target order."""
        out = []
        for target in self.recipe.targets:
            placement = registry.backend(target.backend).placement_for(graph.kind) if target.precision == "int8" else None
            if placement is not None and placement not in out:
                out.append(placement)
        return out

    def calibrate_for_placements(self, graph: Graph) -> None:
        """Shared ranges for a graph the family quantized without them (a dynamic-int8 text tower) when an int8
        target's backend places it from ranges (TensorRT has no dynamic int8): one calibration pass of that placement's
        tensors on the graph's own calibration samples, never the evaluation set."""
        from edgekit.quantization.calibration import collect_ranges
        from edgekit.quantization.ptq import calibration_settings, tensors_for_placements

        q, feeds = self.recipe.quantization, graph.calibration
        if graph.kind == "cnn" or graph.ranges or graph.int8 == "float" or q is None or feeds is None:
            return
        placements = self.target_placements(graph)
        if not placements:
            return
        fp32 = load_onnx(graph.fp32)
        tensors = tensors_for_placements(fp32, placements, graph.float_nodes, graph.float_ops)
        method, percentile = q.method, q.percentile
        if method == "auto":
            with self.timer(self._label(graph.name, "tune ranges")):
                method, percentile = self.choose_ranges(graph, fp32, tensors, placements[0])
        with self.timer(self._label(graph.name, "calibrate")):
            calib = collect_ranges(fp32, tensors, feeds.items, feeds.transform, method, percentile, self.run.threads, progress.track)
        graph.ranges = dict(calib.ranges)
        graph.ranges_settings = calibration_settings(method, percentile, q.per_channel, calib.images, calib.key)

    def bias_correct(self, graph: Graph, fp32, result) -> None:
        """``quantization.bias_correction``: ORT's Q/DQ model placed again from the bias-corrected FP32 graph
        (``edgekit.quantization.bias_correction``); ``auto`` keeps it only on evidence on the tuning images (the rule of
        ``method: auto``). Other placements (TensorRT) read the uncorrected graph."""
        from edgekit.quantization.bias_correction import correct_biases
        from edgekit.quantization.placement import ORT_PLACEMENT, quantized_nodes
        from edgekit.quantization.ptq import place

        q, feeds = self.recipe.quantization, graph.calibration
        nodes = quantized_nodes(fp32, ORT_PLACEMENT, graph.float_nodes, graph.float_ops)
        items = list(feeds.items)[: q.bias_correction_samples]
        corrected, info = correct_biases(fp32, result.spec, nodes, items, feeds.transform, self.run.threads, progress.track)
        model, spec = place(corrected, ORT_PLACEMENT, result.calibration.ranges, graph.float_nodes, graph.float_ops, result.spec.settings)
        keep = True
        if q.bias_correction == "auto":
            scorer = self.tuning_scorer(graph, "ranges")
            trace = self.score_candidates(scorer, [("without", result.model), ("with", model)], 2, "tune bias correction")
            keep = choose_candidate(trace, q.tuning.min_evidence)["candidate"] == "with"
            self.tuning_record(graph)["bias_correction"] = {"metric": scorer.description, "candidates": trace, "chosen": "with" if keep else "without"}
            progress.log(f"bias correction: {'kept' if keep else 'dropped'} (tuning loss {trace[0]['loss_pt']:.3g} -> {trace[1]['loss_pt']:.3g} pt)")
        if keep:
            spec.settings = {**spec.settings, "bias_correction": info}
            result.model, result.spec = model, spec
        else:
            result.spec.settings = {**result.spec.settings, "bias_correction": "off (no evidence on the tuning images)"}

    def wants_qat(self, graph: Graph) -> bool:
        """``mode: qat``, or ``auto`` when the search's choice missed ``search.max_loss_pt`` on the tuning images."""
        q = self.recipe.quantization
        if q.mode == "auto":
            missed = not self.tuning_record(graph).get("search", {}).get("met", True)
            self.tuning_record(graph)["qat_decision"] = "QAT: the search missed max_loss_pt" if missed else "PTQ: the search met max_loss_pt"
            return missed
        return q.mode == "qat"

    def qat(self, graph: Graph, result) -> None:
        """QAT of ONNX Runtime's Q/DQ graph in ``result`` (:meth:`train_qat`), recorded in its spec settings."""
        result.model, record = self.train_qat(graph, result.model)
        result.spec.settings = {**result.spec.settings, "qat_training": record}

    def train_qat(self, graph: Graph, model: Any) -> tuple[Any, dict[str, Any]]:
        """Label-free QAT of a Q/DQ graph (``edgekit.qat``): FP32 teaches it on the QAT samples (the ``qat.images``
        folders; else the calibration folder, or the graph's own calibration texts for a text tower), with the
        family's loss and, for transformers, each quantized LayerNorm output. Checkpoints live in the cache (keyed by
        graph, samples and settings), so an interrupted export resumes training where it stopped."""
        from edgekit.qat.distill import QatSettings, norm_outputs, train
        from edgekit.quantization.calibration import cache_dir, calibration_images, sample_digest

        q, feeds = self.recipe.quantization, graph.calibration
        c = q.qat
        own = list(feeds.items)
        unit = "images" if c.images or not own or isinstance(own[0], Path) else "texts"
        if unit == "images":
            folders = c.images or [q.calibration.images]
            items = [p for folder in folders for p in calibration_images(folder, c.count or 10**9, warn_below=1)]
        else:  # the graph's own calibration captions
            folders, items = ["calibration texts"], own[: c.count or None]
        self.record_samples(f"qat {unit} {graph.name}", items, unit)
        settings = QatSettings(steps=c.steps, lr=c.lr, scale_lr=c.scale_lr or c.lr, batch=c.batch, seed=c.seed, learn_scales=c.learn_scales,
                               flip=c.flip, checkpoint_every=c.checkpoint_every, threads=self.run.threads, feature_weight=c.feature_weight)
        features = norm_outputs(model, load_onnx(graph.fp32)) if c.features else []
        digest = hashlib.sha256(model.SerializeToString(deterministic=True))
        for item in items:
            digest.update(sample_digest(item).encode())
        checkpoint = cache_dir().parent / "qat" / f"{graph.name}-{digest.hexdigest()[:16]}"
        out = train(model, graph.fp32, items, feeds.transform, settings, self.family.qat_loss(graph.name), checkpoint, features=features)
        losses = out.losses
        record = {"images": len(items), "folders": [str(f) for f in folders], "settings": out.settings, "seconds": round(out.seconds, 1),
                  "resumed_from_step": out.resumed_from, "peak_rss_mb": round(out.peak_rss_mb), "features": len(features),
                  "loss_first_10": round(float(np.mean(losses[:10])), 5), "loss_last_10": round(float(np.mean(losses[-10:])), 5),
                  "reaches": self.qat_targets()}
        self.tuning_record(graph)["qat"] = record
        progress.log(f"QAT {graph.name}: {c.steps} steps on {len(items)} samples in {out.seconds:.0f} s, distillation loss "
                     f"{record['loss_first_10']:.4f} -> {record['loss_last_10']:.4f}")
        return out.model, record

    def carry_qat(self, graph: Graph, trained: Any) -> None:
        """What QAT learned, for TensorRT's own placement: the FP32 model with the trained weights and biases, and
        the ranges the trained activation scales encode (``edgekit.qat.transfer``); ``trained``: the ONNX model."""
        from edgekit.qat.transfer import trained_float_model, trained_ranges

        model, convs = trained_float_model(load_onnx(graph.ranges_model or graph.fp32), trained)
        graph.trained_model = self.stage / file_name(graph, "model_fp32_qat.onnx")
        save_onnx(model, graph.trained_model, {"precision": "fp32", "weights": "QAT-trained"})
        graph.trained_ranges, replaced = trained_ranges(trained, graph.ranges)
        self.tuning_record(graph)["qat"]["carried_to_tensorrt"] = {"convs": convs, "ranges": replaced, "model": graph.trained_model.name}

    def qat_targets(self) -> list[str]:
        """The int8 targets (of the backends in ``family.qat_reaches``) that run what QAT trained: ONNX Runtime's graph,
        OpenVINO's import of it unless it quantizes with NNCF, TensorRT's placement from the trained weights and
        ranges, and LiteRT's conversion of the trained weights."""
        out = []
        for t in self.recipe.targets:
            if t.precision != "int8" or t.accuracy_control:
                continue
            if t.backend in self.family.qat_reaches and (t.backend != "openvino" or self.recipe.openvino.int8_from != "nncf"):
                out.append(t.name)
        return out

    def score_candidates(self, scorer, candidates, count: int, label: str) -> list[dict[str, Any]]:
        """Each ``(name, Q/DQ model)`` saved to a temporary file beside the run and scored with its fold scores: the
        trace rows :func:`choose_candidate` decides on."""
        import tempfile

        folds, trace = self.recipe.quantization.tuning.folds, []
        with tempfile.TemporaryDirectory(dir=self.stage, prefix=".tune-") as tmp:
            steps, items = progress.track(f"{label} ({scorer.name}, {len(scorer.samples)} images)", count), iter(candidates)
            for _ in steps:
                name, model = next(items)
                path = Path(tmp) / "candidate.onnx"
                save_onnx(model, path)
                start = time.perf_counter()
                (score,), fold_scores = scorer.score_folds(path, folds)
                trace.append({"candidate": name, "score": round(score, 5), "loss_pt": scorer.loss_pt(score),
                              "fold_scores": [round(f, 5) for f in fold_scores], "seconds": round(time.perf_counter() - start, 2)})
        return trace

    def tuning_record(self, graph: Graph) -> dict[str, Any]:
        """The report's tuning entry of ``graph`` (created on first use): which images chose its settings, how scored."""
        if not hasattr(self, "tuning"):
            self.tuning: dict[str, Any] = {"sets": self.family.tuning_sets(), "graphs": {}}
        return self.tuning["graphs"].setdefault(graph.name, {})

    def tuning_scorer(self, graph: Graph, purpose: str = "search"):
        """The family's label-free scorer of ``graph`` for ``purpose`` (``ranges``: PTQ settings such as the range method
        and bias correction; ``search``: which groups stay float), made once: it computes the FP32 reference on first use."""
        scorers = self.__dict__.setdefault("_scorers", {})
        if (graph.name, purpose) not in scorers:
            scorer = self.family.tuning_scorer(graph, purpose)
            if scorer is None:
                raise EdgekitError(f"the {self.family.name} family has no tuning metric for its {graph.name} graph", self.recipe_path,
                                   "set quantization.method to minmax, percentile, entropy or mse")
            scorers[graph.name, purpose] = scorer
        return scorers[graph.name, purpose]

    def choose_ranges(self, graph: Graph, fp32, tensors: list[str], placement=None) -> tuple[str, float]:
        """``quantization.method: auto``: every candidate range method from one observation of the calibration images,
        each placed as ORT's Q/DQ model and scored label-free on the tuning images; the best (ties: the first listed)
        serves every placement. The evaluation set never enters."""
        from edgekit.quantization.calibration import collect_candidates, parse_candidate
        from edgekit.quantization.placement import ORT_PLACEMENT
        from edgekit.quantization.ptq import calibration_settings, place

        q, feeds = self.recipe.quantization, graph.calibration
        scorer = self.tuning_scorer(graph, "ranges")
        results = collect_candidates(fp32, tensors, feeds.items, feeds.transform, q.tuning.candidates, self.run.threads, progress.track)

        def candidates():
            for text, calib in results.items():
                method, percentile = parse_candidate(text)
                settings = calibration_settings(method, percentile, q.per_channel, calib.images, calib.key, q.reduce_range_here())
                yield text, place(fp32, placement or ORT_PLACEMENT, calib.ranges, graph.float_nodes, graph.float_ops, settings)[0]

        trace = self.score_candidates(scorer, candidates(), len(results), "tune ranges")
        best = choose_candidate(trace, q.tuning.min_evidence)
        self.tuning_record(graph)["ranges"] = {"metric": scorer.description, "candidates": trace, "chosen": best["candidate"],
                                               "rule": f"the first candidate unless another scores higher by at least {q.tuning.min_evidence} "
                                                       f"standard errors of its paired gain over {q.tuning.folds} folds of the tuning images"}
        progress.log(f"ranges: {best['candidate']} (tuning loss {best['loss_pt']:.3g} pt; " +
                     ", ".join(f"{r['candidate']} {r['loss_pt']:.3g}" for r in trace if r is not best) + ")")
        return parse_candidate(best["candidate"])

    def search_float_groups(self, graph: Graph, fp32, tensors: list[str], method: str, percentile: float) -> None:
        """``quantization.search``: the fastest set of quantizer groups left float (measured ORT latency) whose tuning loss
        meets the budget; the chosen groups join ``graph.float_nodes`` for every placement. With ``search.per_backend``,
        each other int8 backend that times candidates itself (OpenVINO) searches its own float scope too, in its own
        latency, reusing ORT's sensitivity table; its choice joins ``graph.backend_float_nodes`` instead. Under ``mode: auto``
        a missed budget applies nothing: QAT trains the all-int8 graph, whose every quantizer it can adapt (the
        lowest-loss miss is often all float, which leaves QAT nothing to train)."""
        import tempfile

        from edgekit.quantization.calibration import collect_ranges
        from edgekit.quantization.placement import ORT_PLACEMENT
        from edgekit.quantization.ptq import calibration_settings
        from edgekit.tuning.groups import quantizer_groups
        from edgekit.tuning.search import held_out_scorer, search

        q, feeds = self.recipe.quantization, graph.calibration
        s = q.search
        calib = collect_ranges(fp32, tensors, feeds.items, feeds.transform, method, percentile, self.run.threads, progress.track)
        settings = calibration_settings(method, percentile, q.per_channel, calib.images, calib.key, q.reduce_range_here())
        scorer = self.tuning_scorer(graph).subset(s.images)
        holdout = held_out_scorer(self.tuning_scorer(graph), s.images)

        def run(scope: list[str], table=None, timer=None, backend: str = "onnxruntime", score_on_timer: bool = False,
                placement=ORT_PLACEMENT, cost=None):
            groups = quantizer_groups(fp32, placement, scope, graph.float_ops)
            if table is not None:  # the shared table, narrowed to the groups this scope quantizes
                names = {g.name for g in groups}
                table = dataclasses.replace(table, rows=[r for r in table.rows if r.group in names])
            estimate = None
            if cost is not None:  # a cost model prices candidates of this placement (TensorRT without a GPU)
                from edgekit.backends.tensorrt.cost import group_estimator
                from edgekit.quantization.placement import matches, quantized_nodes

                quantized = [n.name for n in quantized_nodes(fp32, placement, scope, graph.float_ops)]
                estimate = group_estimator(cost, quantized, [n.name for n in fp32.graph.node if matches(n.name, scope)], groups)
            with tempfile.TemporaryDirectory(dir=self.stage, prefix=".search-") as tmp:
                result = search(fp32, placement, calib.ranges, scope, graph.float_ops, settings, scorer, groups,
                                max_loss_pt=s.max_loss_pt, workdir=Path(tmp), threads=self.run.threads, margin_pt=s.margin_pt,
                                time_limit_s=s.time_limit_s, sensitivity=table, latency_runs=s.latency_runs, progress=progress.track,
                                timer=timer, backend=backend, score_on_timer=score_on_timer, holdout=holdout, estimate=estimate)
            progress.log(f"search ({backend}): {len(result.float_groups)} groups float ({', '.join(result.float_groups) or 'none'}), "
                         f"tuning loss {result.loss_pt:.2f} pt (all int8 {result.baseline_loss_pt:.2f}), {result.delta_ms:+.2f} ms vs all int8")
            return result

        result = run(graph.float_nodes)
        record = self.tuning_record(graph)
        record["search"] = {**result.to_dict(), "tuning_images": len(scorer.samples)}
        if not result.met and q.mode == "auto":  # QAT follows: it trains all int8 (the float it would keep bought too little)
            record["search"]["applied"] = "no: the search missed max_loss_pt, so QAT trains the all-int8 graph"
            progress.log("search missed its budget: no groups left float, QAT trains the all-int8 graph")
            return
        wide = list(result.float_nodes)  # what the wide-scope backends (NNCF) add: ORT's choice unless they search their own
        for backend in self.search_backends() if s.per_backend else []:
            own_search = functools.partial(self.search_backend, graph, backend, run, result.table, record, len(scorer.samples))
            if backend.build_last:  # it converts with JAX loaded (LiteRT): search just before its build, when nothing forks after
                self.deferred_searches.setdefault(backend.name, []).append(own_search)
                continue
            own = own_search()
            if own is not None and backend.wide_float_scope:
                wide = list(own.float_nodes)
        graph.float_nodes = list(graph.float_nodes) + list(result.float_nodes)
        graph.searched_float_nodes["onnxruntime"] = list(result.float_nodes)  # so a backend with its own choice can drop it
        if graph.backend_float_nodes is not None:
            graph.backend_float_nodes = list(graph.backend_float_nodes) + wide

    def search_backend(self, graph: Graph, backend, run, table, record: dict, images: int):
        """One backend's own search over ``graph`` (``run``: the search of :meth:`search_float_groups` on a float
        scope), priced by its ``candidate_runner``; its choice goes to ``graph.searched_float_nodes`` (and, for a
        wide-scope backend, is returned for ``graph.backend_float_nodes``). None when it cannot search."""
        scope = graph.backend_float_nodes if backend.wide_float_scope and graph.backend_float_nodes is not None else graph.float_nodes
        # an explicit budget is an absolute loss: where the backend's quantizer differs (NNCF), score its own build
        budgeted = backend.scores_budgeted_candidates and not backend.scores_candidates and self.recipe.quantization.search.max_loss_pt is not None
        timer = functools.partial(backend.candidate_runner, graph=graph, threads=self.run.threads, recipe=self.recipe,
                                  **({"scoring": True} if budgeted else {}))
        scores = backend.scores_candidates or budgeted
        priced = backend.candidate_cost(graph, self.recipe) if not backend.times_candidates else None
        try:
            if priced is not None:  # no engine here: candidates in the backend's placement, priced by its cost model
                own = run(list(scope), table, None, backend.name, False, backend.placement(), priced[0])
            else:
                own = run(list(scope), table, timer, backend.name, scores)
        except EdgekitError as exc:
            record.setdefault("search_notes", []).append(f"{backend.name}: no search of its own ({str(exc).split(' -- fix')[0]}); "
                                                         "it takes ONNX Runtime's float groups" if backend.wide_float_scope else
                                                         f"{backend.name}: no search of its own ({str(exc).split(' -- fix')[0]})")
            return None
        record.setdefault("backend_searches", {})[backend.name] = {
            **own.to_dict(), "tuning_images": images, "sensitivity": None,
            "scored_on": (f"{backend.name} (each candidate built as the target is)" if budgeted else backend.name) if scores else
                         "onnxruntime" if priced is None else f"onnxruntime ({backend.name} placement)",
            "priced_by": priced[1] if priced is not None else f"{own.backend} latency, measured on this machine"}
        if not backend.wide_float_scope or budgeted:  # budgeted: the build reverts exactly these, as its candidates did
            graph.searched_float_nodes[backend.name] = list(own.float_nodes)
        return own

    def search_backends(self) -> list:
        """The backends of the recipe's int8 targets, other than ONNX Runtime, that time search candidates themselves
        or price them with a cost model (TensorRT)."""
        out = {}
        for target in self.recipe.targets:
            backend = registry.backend(target.backend)
            prices = backend.times_candidates or type(backend).candidate_cost is not Backend.candidate_cost
            if target.precision == "int8" and prices and not backend.available():
                out.setdefault(backend.name, backend)
        return list(out.values())

    def build(self) -> dict[Target, dict[str, Built]]:
        """Every graph of every target, backends that must come last (LiteRT) last; recipe order kept."""
        builds: dict[Target, dict[str, Built]] = {}
        for target in sorted(self.recipe.targets, key=lambda t: registry.backend(t.backend).build_last):
            backend = registry.backend(target.backend)
            for own_search in self.deferred_searches.pop(backend.name, []):
                with self.timer(f"search {backend.name}"):
                    own_search()
            with self.timer(f"build {target.name}"):
                reason = backend.available()
                if reason:
                    builds[target] = {g: Built(None, target.precision, not_built=reason) for g in self.graphs}
                else:
                    builds[target] = {name: backend.build(graph, target, self.run) for name, graph in self.graphs.items()}
            reasons = sorted({b.not_built for b in builds[target].values() if b.not_built})
            if reasons:
                progress.log(f"[yellow]{target.name} not built:[/] {'; '.join(reasons)}")
        return {t: builds[t] for t in self.recipe.targets}

    # --- measurement ------------------------------------------------------------------------------------------

    def measure(self, builds: dict[Target, dict[str, Built]]) -> tuple[list[Variant], Evaluation | None, Target]:
        """Evaluate every built target (the reference first), then time them all round-robin in one loop."""
        from edgekit.profiling.memory import PeakMemory

        ref = reference_target(self.recipe.targets, builds)
        self.reference_name = ref.name
        order = [ref] + [t for t in self.recipe.targets if t != ref]
        variants = {t: self.variant(t, builds[t]) for t in self.recipe.targets}
        runners: dict[Target, dict[str, Any]] = {}
        reference: Evaluation | None = None
        self.eval_samples: dict[str, dict[str, Any]] = {}  # target name -> per-sample data for the budget intervals
        try:
            for target in order:
                if variants[target].status == "not_built":
                    continue
                with PeakMemory() as memory:
                    runners[target] = {}
                    for name, built in builds[target].items():
                        runners[target][name] = built.make_runner() if built.built else built.simulate()
                        runners[target][name].load()
                    with self.timer(f"evaluate {target.name}"):
                        result = self.family.evaluate(target, runners[target], reference)
                v = variants[target]
                v.peak_memory_mb = round(memory.peak_mb, 1) if v.status == "measured" else None
                v.metrics, v.fidelity, v.per_class_ap = result.metrics, result.fidelity, result.per_class_ap
                v.notes += result.notes
                self.eval_samples[target.name] = result.samples
                reference = result if reference is None else reference
                if v.status == "measured" and all(b.simulate for b in builds[target].values()):
                    self._simulation_beside_engine(target, builds[target], v, reference)
            timed = {t: r for t, r in runners.items() if variants[t].status == "measured"}  # a simulation's speed means nothing
            self._latency(timed, variants)
            for target, speed in self.family.speed(timed).items():
                self._apply_speed(variants[target], speed)
        finally:
            for graph_runners in runners.values():
                for runner in graph_runners.values():
                    runner.close()
        for target in (t for t in runners if variants[t].status == "measured"):
            files = {g: b.path for g, b in builds[target].items()}
            if (mem := self.family.memory(target, files)) is not None:
                variants[target].peak_memory_mb = mem["peak_rss_mb"]
                variants[target].metrics["peak_memory_delta_mb"] = mem["delta_mb"]
        return [variants[t] for t in self.recipe.targets], reference, ref

    def _simulation_beside_engine(self, target: Target, built: dict[str, Built], variant: Variant, reference: Evaluation) -> None:
        """A real engine that also has a CPU simulation (TensorRT where TensorRT runs): evaluate the simulation too
        and report both, since the gap between them measures what the simulation leaves out."""
        sim = self.evaluate_built(target, built, reference, simulated=True, label=f"{target.name} simulated")
        variant.simulated_metrics = {k: float(x) for k, x in sim.metrics.items() if isinstance(x, int | float)}
        variant.simulated_how = simulated_how(built)
        gaps = [f"{m} {variant.metrics[m]:.4f} vs {x:.4f}" for m, x in variant.simulated_metrics.items() if m in variant.metrics and m in self.recipe.budgets]
        if gaps:
            variant.notes.append("engine vs its CPU simulation: " + ", ".join(gaps))

    def _latency(self, runners: dict[Target, dict[str, Any]], variants: dict[Target, Variant]) -> None:
        from edgekit.profiling.latency import measure_latency_interleaved

        feeds = self.family.latency_feeds()
        if feeds is None or not runners:
            return
        b = self.recipe.model.batch
        cases, where = {}, {}
        for target, graph_runners in runners.items():
            for graph, runner in graph_runners.items():
                key = target.name if graph == "model" else f"{target.name}/{graph}"
                feed = {k: np.concatenate([x] * b) for k, x in feeds[graph].items()} if b > 1 else feeds[graph]
                cases[key], where[key] = (runner, feed), (target, graph)
        with self.timer("latency"):
            stats = measure_latency_interleaved(cases, self.recipe.benchmark.warmup, self.recipe.benchmark.runs, b, progress.enabled())
        for key, s in stats.items():
            target, graph = where[key]
            holder = variants[target] if graph == "model" else variants[target].components[graph]
            holder.latency_ms, holder.throughput_per_s = latency_ms(s), round(s.throughput_per_s, 2)

    @staticmethod
    def _apply_speed(variant: Variant, speed: dict[str, Any]) -> None:
        variant.latency_ms = latency_ms(speed["latency"])
        variant.throughput_per_s = round(speed["throughput_per_s"], 2)
        variant.metrics.update(speed.get("metrics", {}))
        variant.manifest["settings"].update(speed.get("settings", {}))

    def variant(self, target: Target, built: dict[str, Built]) -> Variant:
        """The report record of one target before measurement: status, files, sizes and provenance."""
        from edgekit.profiling.memory import model_size_bytes

        r, names = self.recipe, list(built)
        single = names == ["model"]
        reasons = sorted({b.not_built for b in built.values() if b.not_built})
        simulated = bool(reasons) and all(b.simulate is not None or b.built for b in built.values())

        def rel(path: Path | None) -> str:
            return str(path.relative_to(self.stage)) if path else ""

        def quant(graph: str) -> dict | None:
            form = self.graphs[graph].quantized.get(target.precision) if target.quantized else None
            return form.settings if form and built[graph].precision != "fp32" else None

        def per_graph(value):
            return value(names[0]) if single else {g: value(g) for g in names}

        sha = {g: sha256_file(b.path) if b.path and b.path.is_file() else None for g, b in built.items()}
        components = {} if single else {
            g: Component(model_path=rel(b.path), precision=b.precision, size_bytes=model_size_bytes(b.path) if b.path else 0,
                         artifact_sha256=sha[g], settings={"quantization": quant(g), "backend": b.settings})
            for g, b in built.items()
        }
        main = built[self.family.main_graph or names[0]]
        return Variant(
            name=target.name, backend=target.backend, precision=target.precision, model_path=rel(main.path),
            status=("simulated" if simulated else "not_built") if reasons else "measured", not_built_reason="; ".join(reasons) or None,
            simulated_how=simulated_how(built) if simulated else None,
            files=[rel(p) for b in built.values() for p in b.files], batch=r.model.batch, threads=r.benchmark.threads,
            size_bytes=sum(model_size_bytes(b.path) for b in built.values() if b.path),
            notes=[n for b in built.values() for n in b.notes], components=components,
            manifest={
                "versions": versions(),
                "settings": {
                    **self.family.settings(),
                    "export": per_graph(lambda g: self.graph_settings[g]["export"]),
                    "passes": per_graph(lambda g: self.graph_settings[g]["passes"]),
                    "quantization": per_graph(quant) if target.quantized else None,
                    "backend": per_graph(lambda g: built[g].settings),
                    "benchmark": r.benchmark.model_dump(),
                },
                "inputs": dict(self.inputs),
                "artifact_sha256": per_graph(lambda g: sha[g]),
            },
        )

    def report(self, variants: list[Variant], reference: Target) -> Report:
        from edgekit.profiling.device import device_fingerprint
        from edgekit.reports import evaluate_budgets

        r = self.recipe
        budgets = {k: v.model_dump(exclude_none=True) for k, v in r.budgets.items()}
        ref = next(v for v in variants if v.name == reference.name)
        samples = getattr(self, "eval_samples", {})
        gated = [v for v in variants if v is not ref and budgets and v.status in ("measured", "simulated")]
        if gated:
            with self.timer("bootstrap intervals"):
                for v in gated:
                    v.budget = evaluate_budgets(ref.metrics, v.metrics, budgets, samples.get(ref.name), samples.get(v.name, {}))
        return Report(
            edgekit_version=edgekit.__version__,
            created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            recipe={"name": r.name, "path": str(self.recipe_path), "sha256": sha256_file(self.recipe_path), "content": r.model_dump()},
            budgets=budgets, reference=ref.name, device=device_fingerprint(), variants=variants, timings_s=self.timings,
            tuning=getattr(self, "tuning", None),
        )

    def prepare_graphs(self) -> None:
        """Every stage before the builds: load, export, prepare and check each graph, then quantize it where a target
        needs int8 (benchmarks that add their own peers to the builds start here too)."""
        with self.timer("load"):
            self.family.load()
        for spec in self.family.graphs():
            self.prepare(self.export(spec))
        self.family.check_graphs()
        if any(t.quantized for t in self.recipe.targets):
            for graph in self.graphs.values():
                self.family.quantize(graph)
                self.calibrate_for_placements(graph)

    def evaluate_built(self, target: Target, built: dict[str, Built], reference: Evaluation | None, simulated: bool = False,
                       label: str | None = None) -> Evaluation:
        """Evaluate one target's graphs, each through its engine, or its CPU simulation when not built or when
        ``simulated``; the runners are loaded for this evaluation only and closed after it."""
        runners = {g: b.simulate() if simulated or not b.built else b.make_runner() for g, b in built.items()}
        try:
            for runner in runners.values():
                runner.load()
            with self.timer(f"evaluate {label or target.name}"):
                return self.family.evaluate(target, runners, reference)
        finally:
            for runner in runners.values():
                runner.close()

    def execute(self) -> Report:
        """Every stage inside the staging folder; returns the report (not yet written)."""
        start = time.perf_counter()
        self.record_input(self.recipe_path)
        self.family.preflight()
        self.prepare_graphs()
        builds = self.build()
        variants, reference, ref_target = self.measure(builds)
        self.family.finalize(reference, {t: {g: b.path for g, b in bs.items() if b.path} for t, bs in builds.items()})
        self.timings["total"] = round(time.perf_counter() - start, 3)
        return self.report(variants, ref_target)


def simulated_how(built: dict[str, Built]) -> str | None:
    """How a target's accuracy was obtained without its engine, one phrase per distinct way among its graphs."""
    return "; ".join(sorted({b.simulated_how for b in built.values() if b.simulated_how})) or None


def choose_candidate(trace: list[dict[str, Any]], min_evidence: float) -> dict[str, Any]:
    """The first row (the default) unless another has a higher score and a paired fold gain over the first of at
    least ``min_evidence`` standard errors; of those, the highest score. Each row gets its ``gain_se`` (gain / its
    standard error; None for the first). A tuning score differing by noise never moves a setting off its default."""
    first, eligible = trace[0], []
    base = np.array(first["fold_scores"])
    first["gain_se"] = None
    for row in trace[1:]:
        gains = np.array(row["fold_scores"]) - base
        se = float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else 0.0
        row["gain_se"] = round(float(gains.mean()) / se, 2) if se > 1e-12 else None  # None: no spread (every fold gains the same)
        sure = row["gain_se"] >= min_evidence if row["gain_se"] is not None else bool(gains.min() > 0)
        if row["score"] > first["score"] and (min_evidence <= 0 or sure):
            eligible.append(row)
    return max(eligible, key=lambda row: row["score"]) if eligible else first


def run_sensitivity(recipe: Recipe, recipe_path: str | Path, both: bool = False, latency_runs: int = 20, force: bool = False) -> dict[str, Any]:
    """``edgekit sensitivity``: export and calibrate as ``export`` does (in a temporary folder, nothing kept), then per
    graph the tuning loss of each quantizer group left float (and, with ``both``, quantized alone) and its measured
    latency cost on ONNX Runtime; graph name -> ``SensitivityTable``."""
    import tempfile

    from edgekit.preflight import preflight
    from edgekit.quantization.calibration import collect_ranges
    from edgekit.quantization.placement import ORT_PLACEMENT, TRANSFORMER_PLACEMENT
    from edgekit.quantization.ptq import calibration_settings, tensors_for_placements
    from edgekit.tuning.groups import quantizer_groups
    from edgekit.tuning.sensitivity import sensitivity

    preflight(recipe, recipe_path, force)
    q = recipe.quantization
    if q is None:
        raise EdgekitError("the recipe has no quantization section: nothing to analyse", recipe_path, "add quantization.calibration")
    tables: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-sensitivity-") as tmp:
        job = Job(recipe, Path(recipe_path), Path(tmp))
        job.family.preflight()
        with job.timer("load"):
            job.family.load()
        for spec in job.family.graphs():
            job.prepare(job.export(spec))
        for graph in job.graphs.values():
            if graph.calibration is None:
                continue
            placement = ORT_PLACEMENT if graph.kind == "cnn" else TRANSFORMER_PLACEMENT
            fp32 = load_onnx(graph.fp32)
            tensors = tensors_for_placements(fp32, [placement], graph.float_nodes, graph.float_ops)
            method, percentile = q.method, q.percentile
            if method == "auto":
                with job.timer(job._label(graph.name, "tune ranges")):
                    method, percentile = job.choose_ranges(graph, fp32, tensors, placement)
            feeds = graph.calibration
            calib = collect_ranges(fp32, tensors, feeds.items, feeds.transform, method, percentile, job.run.threads, progress.track)
            settings = calibration_settings(method, percentile, q.per_channel, calib.images, calib.key, q.reduce_range_here())
            groups = quantizer_groups(fp32, placement, graph.float_nodes, graph.float_ops)
            with job.timer(job._label(graph.name, "sensitivity")):
                tables[graph.name] = sensitivity(fp32, placement, calib.ranges, graph.float_nodes, graph.float_ops, settings, job.tuning_scorer(graph),
                                                 groups, Path(tmp), threads=job.run.threads, latency_runs=latency_runs, progress=progress.track,
                                                 quantized_only=both)
    return tables


def run_recipe(recipe: Recipe, recipe_path: str | Path, out: str | Path, overwrite: bool = False, force: bool = False) -> Report:
    """Run the whole job for ``recipe`` into ``out`` (checked first by ``edgekit.preflight``; locked, staged beside
    it, placed only when everything succeeded: ``edgekit.outdir``); returns the report. ``force`` runs a recipe
    whose memory estimate exceeds the memory available."""
    from edgekit.outdir import run_folder
    from edgekit.preflight import preflight
    from edgekit.reports import write_report

    preflight(recipe, recipe_path, force)
    with run_folder(out, overwrite) as folder:
        try:
            report = Job(recipe, Path(recipe_path), folder.stage).execute()
            write_report(report, folder.stage)
            with _signals_held():
                folder.commit()
        except OSError as exc:
            raise environment_error(exc, folder.real) from None
    return report


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait while the run folder is swapped into place (two renames that must not be split)."""
    import signal

    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
