"""Label-free QAT: the FP32 model (run by ONNX Runtime) teaches the fake-quant Q/DQ graph on unlabelled images.

Deterministic (the batch and flip of step ``i`` are functions of the seed and ``i`` alone) and checkpointed
(safetensors, never pickle): an interrupted run resumes at its last checkpoint and ends with the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from safetensors.torch import load_file, save_file

from edgekit.errors import EdgekitError
from edgekit.progress import enabled, log
from edgekit.qat.graph import QdqGraph
from edgekit.quantization.calibration import sample_digest

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class QatSettings:
    steps: int = 300
    lr: float = 1e-5
    scale_lr: float = 1e-5
    batch: int = 2
    seed: int = 0
    learn_scales: bool = True
    flip: bool = True
    checkpoint_every: int = 25
    threads: int = 2
    feature_weight: float = 1.0  # weight of the intermediate-feature loss (only where ``features`` are given)


@dataclass
class QatResult:
    model: onnx.ModelProto
    losses: list[float]
    seconds: float
    resumed_from: int
    peak_rss_mb: float
    settings: dict


def _soft_bce(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """BCE against soft targets minus the targets' own entropy (a KL divergence): 0 exactly at the teacher."""
    eps = 1e-6
    s, t = student.clamp(eps, 1 - eps), teacher.clamp(eps, 1 - eps)
    return t * (t.log() - s.log()) + (1 - t) * ((1 - t).log() - (1 - s).log())


def detection_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Decoded YOLO rows ``[x, y, w, h, obj, cls...]``: objectness KL everywhere; class KL and box error relative to
    the teacher's box size, both weighted by the teacher's objectness (where there is something to find)."""
    t_obj = teacher[..., 4]
    obj = _soft_bce(student[..., 4], t_obj).mean()
    w = t_obj / t_obj.sum().clamp_min(1e-6)
    cls = _soft_bce(student[..., 5:], teacher[..., 5:]).mean(-1)
    size = teacher[..., 2:4].amax(-1, keepdim=True).clamp_min(8.0)
    box = ((student[..., :4] - teacher[..., :4]).abs() / size).mean(-1)
    return obj + (w * cls).sum() + (w * box).sum()


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Encoders (CLIP towers, sentence embedders): one minus the cosine of each row with the teacher's, averaged."""
    s, t = student.reshape(student.shape[0], -1), teacher.reshape(teacher.shape[0], -1)
    return (1.0 - torch.nn.functional.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()


def feature_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over the tapped tensors of the squared error relative to the teacher tensor's own energy."""
    terms = [((s - t).square().sum() / t.square().sum().clamp_min(1e-12)) for s, t in zip(student, teacher, strict=True)]
    return torch.stack(terms).mean()


def norm_outputs(model: onnx.ModelProto, teacher: onnx.ModelProto) -> list[str]:
    """The outputs of the Q/DQ graph's quantized LayerNormalizations that the FP32 graph also computes (by name):
    each transformer block's output, the intermediate features a transformer distils best from."""
    fp32 = {o for n in teacher.graph.node for o in n.output}
    producers = {o: n for n in model.graph.node for o in n.output}
    return [n.output[0] for n in model.graph.node if n.op_type == "LayerNormalization" and n.output[0] in fp32
            and getattr(producers.get(n.input[0]), "op_type", "") == "DequantizeLinear"]


def _teacher_session(path: str | Path, features: Sequence[str], opts):
    """ONNX Runtime on the FP32 teacher, with ``features`` added as graph outputs."""
    import onnxruntime as ort

    if not features:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    for name in features:
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _digest(settings: QatSettings, model: onnx.ModelProto, inputs: Sequence[str], features: Sequence[str] = ()) -> str:
    h = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    if features:
        h.update(json.dumps(list(features)).encode())
    h.update(model.SerializeToString(deterministic=True))
    for name in inputs:
        h.update(name.encode())
    return h.hexdigest()[:16]


def _batch(step: int, count: int, settings: QatSettings) -> tuple[list[int], bool]:
    """Images and flip of one step: epoch permutations seeded by (seed, epoch), so any step can be recomputed."""
    per_epoch = max(count // settings.batch, 1)
    epoch, slot = divmod(step, per_epoch)
    order = np.random.default_rng([settings.seed, epoch]).permutation(count)
    picks = [int(order[(slot * settings.batch + k) % count]) for k in range(settings.batch)]
    flip = settings.flip and bool(np.random.default_rng([settings.seed, 1_000_003, step]).integers(2))
    return picks, flip


def _peak_rss_mb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except ImportError:  # pragma: no cover - not on POSIX
        return float("nan")


def train(qdq: onnx.ModelProto, teacher_path: str | Path, items: Sequence[Any], transform: Callable[[Any], dict[str, np.ndarray]],
          settings: QatSettings, loss_fn: Loss = detection_loss, checkpoint: Path | None = None,
          stop_after: int | None = None, features: Sequence[str] = ()) -> QatResult:
    """Distil ``qdq`` from the FP32 ONNX ``teacher_path`` on ``items`` (image paths), each made into the graph's feeds
    by ``transform`` when its step needs it (a thousand 640x640 images would not fit in memory at once).

    ``checkpoint`` (a folder) holds ``state.safetensors`` and ``state.json``; a matching one resumes the run.
    ``stop_after`` ends the process's work after that many steps (an interruption, for tests and time limits).
    ``features``: tensors both graphs compute (:func:`norm_outputs`), distilled with :func:`feature_loss` as well.
    """
    import onnxruntime as ort

    if not items:
        raise EdgekitError("QAT needs training images: none were given", fix="set quantization.qat.images or the calibration folder")
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.threads
    teacher = _teacher_session(teacher_path, features, opts)
    t_out = teacher.get_outputs()[0].name
    graph = QdqGraph(qdq, learn_scales=settings.learn_scales, taps=features).train()
    scales = {n.replace(".", "_").replace("/", "_") for n in graph.activation_scales}
    groups = [
        {"params": [p for k, p in graph.params.items() if k not in scales], "lr": settings.lr},
        {"params": [p for k, p in graph.params.items() if k in scales and p.requires_grad], "lr": settings.scale_lr},
    ]
    if not any(g["params"] for g in groups):
        raise EdgekitError("QAT has nothing to train: the Q/DQ graph quantizes no node (every node is left float)",
                           fix="quantize some nodes (shorten quantization.exclude / float_ops) or use mode: ptq")
    opt = torch.optim.Adam([g for g in groups if g["params"]])
    key = _digest(settings, qdq, [sample_digest(i) if isinstance(i, str | Path) else repr(i) for i in items], features)
    start, losses = 0, []
    if checkpoint is not None and (checkpoint / "state.json").is_file():
        meta = json.loads((checkpoint / "state.json").read_text())
        if meta.get("key") == key:
            state = load_file(str(checkpoint / "state.safetensors"))
            with torch.no_grad():
                for k, p in graph.params.items():
                    p.copy_(state[f"param.{k}"])
            opt_state = opt.state_dict()
            count = sum(len(g["params"]) for g in opt.param_groups)
            opt_state["state"] = {
                i: {"step": torch.tensor(float(meta["step"])), "exp_avg": state[f"opt.{i}.exp_avg"], "exp_avg_sq": state[f"opt.{i}.exp_avg_sq"]}
                for i in range(count) if f"opt.{i}.exp_avg" in state
            }
            opt.load_state_dict(opt_state)
            start, losses = int(meta["step"]), list(meta["losses"])
            log(f"QAT: resuming at step {start} from {checkpoint}")
    began = time.perf_counter()
    end = settings.steps if stop_after is None else min(settings.steps, start + stop_after)
    bar = _Bar(settings.steps, start)
    for step in range(start, end):
        picks, flip = _batch(step, len(items), settings)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in picks:  # exported graphs have a fixed batch: accumulate gradients image by image
            feeds = transform(items[i])
            if flip:  # horizontal flip of image inputs (NCHW)
                feeds = {k: np.ascontiguousarray(v[..., ::-1]) if v.ndim == 4 else v for k, v in feeds.items()}
            targets = [torch.from_numpy(t) for t in teacher.run([t_out, *features], feeds)]
            outs = graph(*(torch.from_numpy(feeds[n]) for n in graph.inputs))
            loss = loss_fn(outs[0], targets[0])
            if features:
                loss = loss + settings.feature_weight * feature_loss(outs[len(graph.outputs):], targets[1:])
            loss = loss / len(picks)
            loss.backward()
            total += float(loss.detach())
        opt.step()
        with torch.no_grad():
            for name in scales & set(graph.params.keys()):
                graph.params[name].clamp_(min=1e-8)
        losses.append(total)
        bar.update(step + 1, losses[-1])
        done = step + 1
        if checkpoint is not None and (done % settings.checkpoint_every == 0 or done == end):
            _save(checkpoint, graph, opt, key, done, losses)
    bar.close()
    return QatResult(graph.export(), losses, time.perf_counter() - began, start, _peak_rss_mb(), asdict(settings))


def _save(folder: Path, graph: QdqGraph, opt: torch.optim.Optimizer, key: str, step: int, losses: list[float]) -> None:
    """Write the checkpoint atomically (temporary names, then rename): a kill mid-write leaves the previous one."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"param.{k}": p.detach().clone().contiguous() for k, p in graph.params.items()}
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        st = opt.state.get(p)
        if st:
            tensors[f"opt.{i}.exp_avg"] = st["exp_avg"].contiguous()
            tensors[f"opt.{i}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
    tmp = folder / f".state.safetensors.{os.getpid()}"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / "state.safetensors")
    tmp_json = folder / f".state.json.{os.getpid()}"
    tmp_json.write_text(json.dumps({"key": key, "step": step, "losses": losses}))
    os.replace(tmp_json, folder / "state.json")


class _Bar:
    """A rich progress bar showing the distillation loss (a log line per 25 steps when not on a terminal)."""

    def __init__(self, total: int, start: int) -> None:
        self.progress = None
        if enabled():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            from edgekit.progress import console

            self.progress = Progress(TextColumn("QAT"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                                     TimeElapsedColumn(), TimeRemainingColumn(), console=console)
            self.progress.start()
            self.task = self.progress.add_task("qat", total=total, completed=start, loss="-")

    def update(self, done: int, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done, loss=f"{loss:.4f}")
        elif done % 25 == 0:
            log(f"QAT step {done}: loss {loss:.4f}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
