"""The family contract: what the one job (``edgekit.job``) asks of a model family.

A family (YOLO, CLIP, a VLM, a user's ONNX model) is one module registered by name (``edgekit.registry``). It
declares its recipe section and the graphs it exports (one, or a composite such as CLIP's two towers), loads its
model and data, gives each graph's feeds (export check, calibration, latency), float scope, quantization (default:
static Q/DQ from the run's shared ranges) and the PyTorch module a converting backend starts from, evaluates a
built target, and finalizes the run folder. Backends never import a family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel

from edgekit.backends.base import AccuracyCheck, Feed, Graph, LazyFeeds, TorchSource
from edgekit.errors import EdgekitError

if TYPE_CHECKING:
    from edgekit.job import Job
    from edgekit.recipe import Recipe
    from edgekit.runners.base import Runner
    from edgekit.targets import Target
    from edgekit.tuning.scorer import TuningScorer


@dataclass
class GraphExport:
    """One graph a family exports: the module, its example call and names, and real inputs for the PyTorch check
    (and for verifying the fusion passes).

    A family without a PyTorch module (``onnx``: a user's ONNX model) gives ``onnx``, an existing ONNX file, instead:
    ``module`` is None and ``example_inputs`` empty; the job imports the file as the graph's raw export (no PyTorch
    check) and still runs and verifies the passes on ``check_feeds``."""

    name: str
    module: Any  # torch.nn.Module (None with ``onnx``)
    example_inputs: tuple
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]] | None
    check_feeds: list[Feed]
    kind: Literal["cnn", "transformer", "decoder"] = "cnn"
    check_module: Any = None  # what the ONNX graph is checked against, when not ``module`` (YOLO: before BN folding)
    onnx: Path | None = None  # an existing ONNX file to import instead of exporting ``module``


@dataclass
class Evaluation:
    """What evaluating one built target gives: gated metrics, fidelity to the reference, and the raw outputs a later
    target is compared against.

    ``samples``: metric -> per-sample data (:class:`edgekit.evaluators.bootstrap.Samples`) for the paired bootstrap
    interval of a budget; kept in memory by the job, never written to the report. A metric without an entry gets
    "no interval"."""

    metrics: dict[str, float] = field(default_factory=dict)
    fidelity: dict[str, float] | None = None
    per_class_ap: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outputs: Any = None
    samples: dict[str, Any] = field(default_factory=dict)


class Family:
    """Base of every family; the job calls these in order: ``preflight``, ``load``, ``graphs``, per graph ``float_nodes`` /
    ``calibration`` / ``quantize`` / ``torch_source`` / ``accuracy``, then ``evaluate`` per target, ``latency_feeds``
    or ``speed``, ``finalize``."""

    name: ClassVar[str]
    config: ClassVar[type[BaseModel] | None] = None  # its recipe section, ``recipe.<name>``
    backends: ClassVar[tuple[str, ...] | None] = None  # None: every registered backend
    forms: ClassVar[tuple[str, ...]] = ("int8",)  # quantized ONNX forms its quantization makes (ORT runs them)
    metrics: ClassVar[tuple[str, ...]] = ()
    main_graph: ClassVar[str | None] = None
    supports_qat: ClassVar[bool] = False  # ``qat_loss`` gives a distillation loss for ``quantization.mode: qat``
    qat_reaches: ClassVar[tuple[str, ...]] = ("onnxruntime",)  # backends whose int8 engine is built from what QAT trained
    keep_raw: ClassVar[bool] = True  # keep the unfused ``<graph>_fp32_raw.onnx`` exports in the run folder  # the graph a variant's ``model_path`` names (None: the first)  # metrics ``evaluate`` returns (budgets may name these)

    def __init__(self, job: Job) -> None:
        self.job = job
        self.recipe: Recipe = job.recipe
        self.provenance: dict[str, Any] = {}

    # --- recipe -----------------------------------------------------------------------------------------------

    @classmethod
    def check_recipe(cls, recipe: Recipe) -> None:
        """Raise ``ValueError`` for a recipe this family cannot run (called while the recipe is validated)."""

    @classmethod
    def estimate_memory_bytes(cls, recipe: Recipe) -> int | None:
        """Estimated peak resident memory of an ``edgekit export`` of ``recipe`` (``edgekit.preflight`` refuses a run
        that does not fit in the memory available); None: no estimate, no check."""
        return None

    @property
    def section(self) -> BaseModel | None:
        return getattr(self.recipe, self.name, None) if self.config else None

    # --- model and graphs -------------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Check the family's input files and names before the first heavy stage (raise ``EdgekitError``): a bad
        annotation file must fail in a second, not after minutes of export."""

    def load(self) -> None:
        """Load the weights and the data the run needs; record every input file with ``job.record_input``."""

    def graphs(self) -> list[GraphExport]:
        """The graphs to export, in order."""
        raise NotImplementedError

    def check_graphs(self) -> None:
        """Checks that need every FP32 graph exported (VLM: greedy generation against PyTorch ``generate``)."""

    def float_nodes(self, graph: str, model) -> tuple[list[str], list[str] | None]:
        """ONNX nodes the shared spec keeps float, and the (wider or equal) scope of backends with their own
        quantizer (None: the same)."""
        q = self.recipe.quantization
        return (list(q.keep_float.nodes) if q else []), None

    def calibration(self, graph: str) -> LazyFeeds | None:
        """The graph's calibration feeds (never evaluation data)."""
        return None

    def quantize(self, graph: Graph) -> None:
        """Fill ``graph.quantized`` (precision -> ONNX form) and ``graph.int8``: default, the job's static Q/DQ from
        the one shared calibration pass."""
        self.job.static_qdq(graph)

    def tuning_scorer(self, graph: Graph, purpose: str = "search") -> TuningScorer | None:
        """How a candidate of ``graph`` is scored label-free for choices: ``purpose`` ``ranges`` (range method, bias
        correction) or ``search`` (groups left float). Default for both, the mean output cosine against FP32 on the first
        ``tuning.count`` calibration samples (or on the ``tuning.images`` folder through the same preprocessing). None:
        no choice by accuracy is possible."""
        from edgekit.tuning.scorer import OutputCosineScorer

        q, feeds = self.recipe.quantization, graph.calibration
        if q is None or feeds is None:
            return None
        items = list(feeds.items)
        if q.tuning.images:
            from edgekit.quantization.calibration import calibration_images

            items = calibration_images(q.tuning.images, q.tuning.count or q.calibration.count, warn_below=1)
        return OutputCosineScorer(graph.fp32, items[: q.tuning.count or None], self.job.run.threads, feeds.transform)

    def qat_loss(self, graph: str):
        """``(student_output, teacher_output) -> loss`` on the graph's first output, for label-free QAT."""
        raise EdgekitError(f"the {self.name} family has no QAT loss", fix="use quantization.mode: ptq")

    def tuning_sets(self) -> dict[str, Any]:
        """For the report: the samples that chose settings and those that measured them."""
        q, ev = self.recipe.quantization, getattr(self.recipe, "evaluation", None)
        return {"tuning_images": (q.tuning.count or q.calibration.count) if q else 0,
                "tuning_folders": [str(q.tuning.images or q.calibration.images)] if q else [],
                "evaluation_images": ev.max_images if ev else None, "evaluation_folders": [str(ev.dataset.images)] if ev else [],
                "labels": "none: scored against FP32 (each graph's calibration samples unless tuning.images is set)",
                "evaluation_used_for_choices": False}

    def torch_source(self, graph: str) -> TorchSource | None:
        """The PyTorch module a converting backend (LiteRT) starts from; None: such backends report "not built"."""
        return None

    def accuracy(self, graph: str) -> AccuracyCheck | None:
        """How a backend's accuracy-aware quantization scores a candidate (NNCF accuracy control)."""
        return None

    # --- measurement ------------------------------------------------------------------------------------------

    def evaluate(self, target: Target, runners: dict[str, Runner], reference: Evaluation | None) -> Evaluation:
        """Metrics of one built target (``runners``: graph -> loaded runner); fidelity against ``reference``."""
        raise NotImplementedError

    def latency_feeds(self) -> dict[str, Feed] | None:
        """One fixed-shape feed per graph for interleaved latency (None: the family times itself in ``speed``)."""
        return None

    def speed(self, runners: dict[Target, dict[str, Runner]]) -> dict[Target, dict[str, Any]]:
        """Family-specific speed (VLM: time to first token, tokens/s), interleaved over targets."""
        return {}

    def memory(self, target: Target, files: dict[str, Path]) -> dict[str, float] | None:
        """Peak memory of a target measured the family's own way (None: the job's in-process peak)."""
        return None

    def settings(self) -> dict[str, Any]:
        """Family settings for every variant's manifest."""
        return {}

    def finalize(self, reference: Evaluation | None, files: dict[Target, dict[str, Path]]) -> None:
        """Write deployment extras into the run folder (NMS graphs, processor and vlm.json, class embeddings)."""

