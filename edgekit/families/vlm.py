"""The VLM family: vision encoder + projector, token embedding and KV-cache decoder, exported as three graphs and run
by a greedy generation loop on ONNX Runtime.

Checks: each graph against PyTorch, and FP32 greedy generation against PyTorch ``generate``. Targets: ``fp32``;
``int8`` (decoder weight-only int8, MatMulNBits); ``int4`` (weight-only int4, blockwise); ``dynamic`` (dynamic int8
MatMuls); quantized targets share the static-int8 vision graph and the int8 embedding table. Measured: fidelity to
the reference (teacher-forced token agreement, logit cosine and KL per step), time to first token and decode speed
(interleaved), peak memory per target in a fresh process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgekit import progress
from edgekit.backends.base import Graph, LazyFeeds, Quantized
from edgekit.config import PathText, Strict
from edgekit.errors import EdgekitError
from edgekit.families.base import Evaluation, Family, GraphExport

GRAPHS = ("vision", "embed", "decoder")
CHECK_SAMPLES = 2


class VlmSpec(Strict):
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


@dataclass
class Case:
    """One (image, prompt) of the fixed prompt set, preprocessed once."""

    image: Path
    prompt: str
    input_ids: np.ndarray
    pixel_values: np.ndarray | None


def _image_files(folder: Path, count: int) -> list[Path]:
    from edgekit.quantization.calibration import IMAGE_SUFFIXES

    if not folder.is_dir():
        raise EdgekitError("image folder not found", folder, "set vlm.images to a folder of JPEG/PNG images (paths may use ${EDGEKIT_ASSETS})")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not files:
        raise EdgekitError("no images in folder", folder, "set vlm.images to a folder of JPEG/PNG images")
    return files


class Vlm(Family):
    name = "vlm"
    config = VlmSpec
    backends = ("onnxruntime", "tensorrt")
    forms = ("int8", "int4", "dynamic")
    metrics = ("token_agreement", "logit_cosine", "logit_kl", "exact_match", "prefix_agreement", "bleu4", "cider")
    main_graph = "decoder"
    keep_raw = False

    @classmethod
    def check_recipe(cls, recipe) -> None:
        if not (recipe.model.weights or recipe.model.config):
            raise ValueError("a vlm model needs `weights` (a model folder) or `config` (architecture, random weights)")
        if recipe.evaluation is not None:
            raise ValueError("a vlm recipe is evaluated by its `vlm` prompt set, not `evaluation`")
        if recipe.vlm is None:
            recipe.vlm = VlmSpec()
        if recipe.vlm.vision_int8 == "static" and recipe.quantization is None and any(t.precision != "fp32" for t in recipe.targets):
            raise ValueError("a quantized vlm target with vlm.vision_int8: static needs a `quantization:` section (calibration images)")

    # --- model and data ---------------------------------------------------------------------------------------

    def load(self) -> None:
        from edgekit.models.vlm.family import VlmFamily

        r = self.recipe
        self.vlm, self.model = VlmFamily.load(r.model.weights, r.model.config, r.model.tokenizer, r.model.seed)
        self.job.record_input(r.model.tokenizer)
        self.provenance = self.vlm.provenance
        self.check: dict[str, Any] | None = None
        with self.job.timer("data"):
            self._load_data()

    def _caption_metrics_on(self) -> bool:
        v = self.recipe.vlm
        if v.caption_metrics == "off" or not v.captions:
            return False
        return v.caption_metrics == "always" or bool(self.recipe.model.weights)

    def _load_data(self) -> None:
        from edgekit.quantization.calibration import calibration_images

        v, q, vlm, job = self.recipe.vlm, self.recipe.quantization, self.vlm, self.job
        images = _image_files(Path(v.images), v.max_images)
        self.cases = [Case(img, prompt, *vlm.inputs(img, prompt)) for img in images for prompt in v.prompts]
        job.record_samples(str(v.images), images)
        self.captions: dict[str, list[str]] = {}
        self.caption_cases: list[Case] = []
        if self._caption_metrics_on():
            from edgekit.evaluators.retrieval import load_coco_captions

            files, texts, index = load_coco_captions(Path(v.captions), [Path(v.images)])
            by_name = {f.name: [t for t, i in zip(texts, index) if i == k] for k, f in enumerate(files)}
            self.captions = {img.name: by_name[img.name] for img in images if img.name in by_name}
            self.caption_cases = [Case(img, v.caption_prompt, *vlm.inputs(img, v.caption_prompt)) for img in images if img.name in self.captions]
            job.record_input(v.captions)
        self.calib_images: list[Path] = []
        if q is not None and any(t.precision != "fp32" for t in self.recipe.targets) and v.vision_int8 == "static":
            self.calib_images = calibration_images(q.calibration.images, q.calibration.count, q.calibration.warn_below)
            job.record_samples(str(q.calibration.images), self.calib_images)

    def _check_feeds(self, name: str) -> list[dict[str, np.ndarray]]:
        """Real inputs for each graph's PyTorch check: prompt pixels, prompt ids, and a prefill of real embeddings."""
        import torch

        from edgekit.models.vlm.architectures import language_parts

        cases = self.cases[:CHECK_SAMPLES]
        if name == "vision":
            return [{"pixel_values": c.pixel_values} for c in cases if c.pixel_values is not None]
        if name == "embed":
            return [{"input_ids": c.input_ids} for c in cases]
        _, embed, _ = language_parts(self.model)
        feeds = []
        for c in cases:
            with torch.no_grad():
                embeds = embed(torch.from_numpy(c.input_ids)).numpy()
            n = c.input_ids.shape[1]
            feeds.append({"inputs_embeds": embeds, "attention_mask": np.ones((1, n), np.int64), "position_ids": np.arange(n, dtype=np.int64)[None],
                          **self.vlm.layout.empty()})
        return feeds

    def graphs(self) -> list[GraphExport]:
        from edgekit.models.vlm.graphs import example_inputs, graph_io, vlm_graphs

        modules = vlm_graphs(self.model, self.vlm.arch)
        examples = example_inputs(self.model, modules["decoder"].layout)
        out = []
        for name in GRAPHS:
            names_in, names_out, dynamic = graph_io(name, modules["decoder"].layout)
            out.append(GraphExport(name, modules[name], examples[name], names_in, names_out, dynamic, self._check_feeds(name),
                                   "decoder" if name == "decoder" else "transformer"))
        return out

    def check_graphs(self) -> None:
        """FP32 ONNX greedy tokens against PyTorch ``generate`` on the first prompts (must be identical)."""
        import torch

        from edgekit.models.vlm.generate import generate

        v, vlm = self.recipe.vlm, self.vlm
        if not v.pytorch_check:
            return
        runners = self._fp32_runners()
        results = []
        with self.job.timer("pytorch generation check"):
            try:
                for case in self.cases[: v.pytorch_check]:
                    ids = torch.from_numpy(case.input_ids)
                    kwargs = {}
                    if case.pixel_values is not None:
                        pixels = torch.from_numpy(case.pixel_values)
                        kwargs["pixel_values"] = pixels[None] if vlm.arch.name == "idefics3" else pixels
                    with torch.no_grad():
                        expected = self.model.generate(
                            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=v.max_new_tokens, do_sample=False, eos_token_id=None,
                            pad_token_id=vlm.eos_token_ids[0] if vlm.eos_token_ids else None, **kwargs)[0, ids.shape[1]:].tolist()
                    got = generate(runners, vlm.layout, case.input_ids, vlm.image_token_id, case.pixel_values, v.max_new_tokens).tokens
                    same = sum(1 for a, b in zip(expected, got) if a == b) if len(expected) == len(got) else 0
                    results.append({"image": case.image.name, "prompt": case.prompt, "tokens": len(expected), "identical_tokens": same, "identical": expected == got})
            finally:
                for runner in runners.values():
                    runner.close()
        self.check = {"prompts": len(results), "identical_sequences": sum(r["identical"] for r in results), "cases": results}
        if results and self.check["identical_sequences"] != len(results):
            progress.log(f"[yellow]FP32 ONNX greedy generation differs from PyTorch on {len(results) - self.check['identical_sequences']} of {len(results)} prompts[/]")

    def _fp32_runners(self) -> dict:
        from edgekit import registry

        ort = registry.backend("onnxruntime")
        runners = {name: ort.runner(graph.fp32, threads=self.job.run.threads) for name, graph in self.job.graphs.items()}
        for runner in runners.values():
            runner.load()
        return runners

    def settings(self) -> dict:
        return {"model": self.provenance, "pytorch_generation_check": self.check, "vlm": self.recipe.vlm.model_dump()}

    # --- quantization -----------------------------------------------------------------------------------------

    def calibration(self, graph: str) -> LazyFeeds | None:
        if graph == "vision" and self.calib_images:
            return LazyFeeds(self.calib_images, lambda p: {"pixel_values": self.vlm.inputs(p, "")[1]})
        return None

    def quantize(self, graph: Graph) -> None:
        """One int8 vision graph and one int8 embedding for every quantized target; one decoder per precision."""
        import json

        import edgekit
        from edgekit.onnx_io import load_onnx, save_onnx
        from edgekit.quantization.dynamic import quantize_dynamic_matmul
        from edgekit.quantization.embedding import quantize_embedding_tables
        from edgekit.quantization.weight_only import output_matmuls, quantize_weight_only

        r, v, job = self.recipe, self.recipe.vlm, self.job
        precisions = [t.precision for t in r.targets if t.quantized]
        out = job.stage / f"{graph.name}_int8.onnx"
        if graph.name == "vision":
            graph.int8 = v.vision_int8
            if v.vision_int8 != "static":
                return
            from edgekit.quantization.transformer_int8 import static_transformer_int8

            with job.timer("quantize vision"):
                feeds = graph.calibration
                result = static_transformer_int8(graph.fp32, out, feeds.items, feeds.transform, r.quantization, job.run.threads, None, {"graph": "vision"})
                settings = result.settings
                graph.ranges, graph.ranges_settings = result.ranges, result.calibration
            graph.quantized = {p: Quantized(out, "int8", settings) for p in precisions}
        elif graph.name == "embed":
            if v.embedding != "int8":
                return
            with job.timer("quantize embed"):
                model, settings = quantize_embedding_tables(load_onnx(graph.fp32))
                save_onnx(model, out, {"edgekit_version": edgekit.__version__, "precision": "int8", "graph": "embed", "embedding_tables": json.dumps(settings, sort_keys=True)})
            graph.quantized = {p: Quantized(out, "int8", settings) for p in precisions}
        else:
            head = output_matmuls(load_onnx(graph.fp32), "logits")
            for mode in dict.fromkeys(t.precision for t in r.targets if t.quantized and t.backend == "onnxruntime"):  # TensorRT runs the decoder fp16
                path = job.stage / f"decoder_{mode}.onnx"
                with job.timer(f"quantize decoder {mode}"):
                    if mode == "dynamic":
                        keep = head if v.lm_head == "float" else []
                        settings = quantize_dynamic_matmul(graph.fp32, path, keep_float=keep, per_channel=r.quantization.per_channel if r.quantization else True)
                    else:
                        bits = 8 if mode == "int8" else 4
                        int8_head = v.lm_head == "int8" and bits == 4
                        exclude = head if v.lm_head == "float" or int8_head else []
                        exclude = exclude + self.search_decoder(graph, mode, bits, exclude)
                        settings = quantize_weight_only(graph.fp32, path, bits, v.block_size, v.symmetric, v.accuracy_level, exclude)
                        if int8_head:  # a second pass: the only float weight MatMul left is the lm_head
                            quantize_weight_only(path, path, 8, v.block_size, v.symmetric, v.accuracy_level)
                            settings["lm_head"] = "int8"
                    settings["lm_head"] = settings.get("lm_head") or ("float" if v.lm_head == "float" else mode)
                graph.quantized[mode] = Quantized(path, mode, settings)

    def tuning_scorer(self, graph: Graph, purpose: str = "search"):
        """The decoder: teacher-forced token agreement with FP32 on the tuning images (``quantization.tuning.images``,
        else the calibration images; the first ``tuning.count``, default 4) x the recipe's prompts, each followed by
        FP32's own greedy continuation (``vlm.max_new_tokens``); the fixed prompt set that measures never enters.
        Other graphs: the default output cosine."""
        from edgekit.quantization.calibration import calibration_images
        from edgekit.tuning.scorer import TokenAgreementScorer

        q, v = self.recipe.quantization, self.recipe.vlm
        if graph.name != "decoder":
            return super().tuning_scorer(graph, purpose)
        if q is None:
            return None
        from edgekit.models.vlm.generate import teacher_forced

        images = calibration_images(q.tuning.images or q.calibration.images, q.tuning.count or 4, warn_below=1)
        runners = self._fp32_runners()
        samples, step = [], None
        try:
            for image in progress.track("tuning prompts (FP32 continuations)", len(images)):
                for prompt in v.prompts:
                    ids, pixels = self.vlm.inputs(images[image], prompt)
                    feed, first, decode = teacher_forced(runners, self.vlm.layout, ids, self.vlm.image_token_id, pixels, v.max_new_tokens)
                    samples.append((feed, first))
                    step = step or decode
        finally:
            for runner in runners.values():
                runner.close()
        self.tuning_images = images
        return TokenAgreementScorer(graph.fp32, samples, self.job.run.threads, timing_feed=step)

    def search_decoder(self, graph: Graph, mode: str, bits: int, exclude: list[str]) -> list[str]:
        """``quantization.search`` on a weight-only decoder: the fastest set of MatMul groups (a layer's attention or MLP
        projections, the lm_head) left float whose teacher-forced token agreement loss on the tuning prompts meets the
        budget, each candidate's decode step timed on ONNX Runtime. Returns the weight MatMuls to leave float."""
        import tempfile

        from edgekit.onnx_io import load_onnx
        from edgekit.quantization.placement import TRANSFORMER_PLACEMENT
        from edgekit.quantization.weight_only import weight_only_builder
        from edgekit.tuning.groups import node_patterns, quantizer_groups
        from edgekit.tuning.search import held_out_scorer, search

        q, v, job = self.recipe.quantization, self.recipe.vlm, self.job
        s = q.search if q is not None else None
        if s is None or not s.enabled:
            return []
        model = load_onnx(graph.fp32)
        scope = node_patterns(exclude)
        groups = quantizer_groups(model, TRANSFORMER_PLACEMENT, scope, [])
        scorer = job.tuning_scorer(graph).subset(s.images)
        holdout = held_out_scorer(job.tuning_scorer(graph), s.images)
        builder = weight_only_builder(graph.fp32, bits, v.block_size, v.symmetric, v.accuracy_level)
        with job.timer(f"search decoder {mode}"), tempfile.TemporaryDirectory(dir=job.stage, prefix=".search-") as tmp:
            result = search(model, TRANSFORMER_PLACEMENT, {}, scope, [], {}, scorer, groups, max_loss_pt=s.max_loss_pt, workdir=Path(tmp),
                            threads=job.run.threads, margin_pt=s.margin_pt, time_limit_s=s.time_limit_s, latency_runs=s.latency_runs,
                            progress=progress.track, backend="onnxruntime", builder=builder, holdout=holdout)
        progress.log(f"search (decoder {mode}): {len(result.float_groups)} groups float ({', '.join(result.float_groups) or 'none'}), "
                     f"tuning loss {result.loss_pt:.2f} pt (all {mode} {result.baseline_loss_pt:.2f}), {result.delta_ms:+.2f} ms per decode step")
        record = job.tuning_record(graph)
        record.setdefault("backend_searches", {})[f"onnxruntime:{mode}"] = {
            **result.to_dict(), "tuning_images": len(getattr(self, "tuning_images", [])), "tuning_prompts": len(scorer.samples),
            "timed_on": "one decode step after the first tuning prompt"}
        by_name = {g.name: g for g in groups}
        return [n for g in result.float_groups for n in by_name[g].nodes]

    # --- measurement ------------------------------------------------------------------------------------------

    def _generate_cases(self, runners: dict, cases: list[Case], label: str, reference: list | None) -> list:
        from edgekit.models.vlm.generate import generate

        v, vlm, out = self.recipe.vlm, self.vlm, []
        for i in progress.track(label, len(cases)):
            c = cases[i]
            free = generate(runners, vlm.layout, c.input_ids, vlm.image_token_id, c.pixel_values, v.max_new_tokens, vlm.eos_token_ids, keep_logits=reference is None)
            forced = None
            if reference is not None:
                forced = generate(runners, vlm.layout, c.input_ids, vlm.image_token_id, c.pixel_values, v.max_new_tokens, forced=reference[i]["free"].tokens, keep_logits=True)
            out.append({"free": free, "forced": forced or free})
        return out

    def evaluate(self, target, runners, reference: Evaluation | None) -> Evaluation:
        """Generations on the prompt set; fidelity to the reference (teacher-forced) and caption metrics."""
        from edgekit.evaluators.generation import generation_fidelity

        ref = reference.outputs if reference else None
        results = self._generate_cases(runners, self.cases, f"generate {target.name}", ref)
        from edgekit.evaluators.bootstrap import generation_samples

        fid = generation_fidelity([r["free"] for r in ref or results], [r["forced"] for r in results], [r["free"] for r in results])
        per_prompt = generation_samples([r["free"] for r in ref or results], [r["forced"] for r in results], [r["free"] for r in results])
        metrics: dict[str, float] = {}
        if self.caption_cases:
            from edgekit.evaluators.captioning import caption_scores

            gens = self._generate_cases(runners, self.caption_cases, f"captions {target.name}", None)
            candidates = {c.image.name: self.vlm.decode(g["free"].tokens) for c, g in zip(self.caption_cases, gens)}
            metrics.update(caption_scores(candidates, {k: self.captions[k] for k in candidates}))
        gated = {k: round(float(val), 6) for k, val in {**metrics, **fid}.items() if not k.endswith("_min") and not k.endswith("_max")}
        samples = [f"{c.image.name} / {c.prompt!r}: {self.vlm.decode(r['free'].tokens)!r}" for c, r in zip(self.cases[:4], results[:4])]
        return Evaluation(metrics=gated, fidelity=fid, notes=samples, outputs=results, samples=per_prompt)

    def speed(self, runners: dict) -> dict:
        """Time to first token and decode tokens/s per target, round-robin over targets (``speed_rounds`` rounds of
        ``speed_tokens`` tokens on the first case, no early stop), after one untimed warm-up each."""
        from edgekit.models.vlm.generate import generate
        from edgekit.profiling.latency import stats_from_times

        v, vlm, case = self.recipe.vlm, self.vlm, self.cases[0]
        times = {t: {"ttft": [], "tps": []} for t in runners}

        def once(run):
            return generate(run, vlm.layout, case.input_ids, vlm.image_token_id, case.pixel_values, v.speed_tokens)

        with self.job.timer("speed"):
            for run in runners.values():
                once(run)
            for _ in progress.track("speed (interleaved)", v.speed_rounds):
                for target, run in runners.items():
                    g = once(run)
                    times[target]["ttft"].append(g.ttft_s * 1e3)
                    times[target]["tps"].append(g.decode_tokens_per_s)
        out = {}
        for target, t in times.items():
            ttft, tps = stats_from_times(t["ttft"], 0, 1), float(np.median(t["tps"]))
            out[target] = {
                "latency": ttft, "throughput_per_s": tps,
                "metrics": {"ttft_ms": round(ttft.median, 3), "decode_tokens_per_s": round(tps, 2)},
                "settings": {"speed": {"prompt_tokens": int(case.input_ids.shape[1]), "generated_tokens": v.speed_tokens, "rounds": v.speed_rounds, "interleaved": True}},
            }
        return out

    def memory(self, target, files: dict[str, Path]) -> dict[str, float]:
        from edgekit.models.vlm.memory_probe import peak_memory

        case = self.cases[0]
        with self.job.timer(f"peak memory {target.name}"):
            return peak_memory(files, self.vlm, case.input_ids, case.pixel_values, self.recipe.vlm.speed_tokens, self.job.run.threads)

    def finalize(self, reference, files) -> None:
        """``processor/`` and ``vlm.json`` (with every target's graph files) for ``edgekit generate``."""
        import json

        from edgekit.artifacts import write_json_atomic

        stage = self.job.stage
        self.vlm.save(stage)
        meta = json.loads((stage / "vlm.json").read_text(encoding="utf-8"))
        meta["targets"] = {t.name: {g: p.name for g, p in graphs.items()} for t, graphs in files.items()}
        write_json_atomic(stage / "vlm.json", meta)

