"""The backend contract: what a backend is told about one graph, what it gives back, and how it runs a file.

A backend (Polygraphy's ``backend/<name>/{loader,runner}``) is one package under ``edgekit.backends`` (or a
third-party package registered by entry point, see ``edgekit.registry``). It knows no model family: everything
family-specific reaches it through a ``Graph`` (its ONNX forms, its float scope, its calibration feeds, the PyTorch
module to convert from, how to validate accuracy).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel

if TYPE_CHECKING:
    from edgekit.quantization.placement import Placement
    from edgekit.recipe import Recipe
    from edgekit.runners.base import Runner
    from edgekit.targets import Target

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Quantized:
    """One quantized ONNX form of a graph made by edgekit's quantization (ONNX Runtime runs it as is)."""

    path: Path
    mode: str  # static | dynamic | int8 | int4 (weight-only) -- what the graph runs in
    settings: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    calibration: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # how the shared ranges were made


@dataclass
class TorchSource:
    """The PyTorch module a converting backend (LiteRT) starts from, shaped by the family for that backend."""

    module: Any  # torch.nn.Module taking the inputs below
    sample: dict[str, Any]  # keyword sample inputs (torch tensors), in the module's layout
    input_names: tuple[str, ...]  # the contract's input names (what callers feed, NCHW for images)
    output_names: tuple[str, ...]  # the converted model's output names
    channels_last: tuple[str, ...] = ()  # inputs the module takes NHWC (runners transpose the contract's NCHW feed)
    wrap_channels_last: bool = False  # the backend wraps the module for NHWC I/O itself (LiteRT's to_channel_last_io)
    float_patterns: tuple[str, ...] = ()  # converted-tensor name regexes kept float in full-int8 builds
    dynamic_patterns: tuple[str, ...] = ()  # name regexes quantized dynamically instead of statically
    pad_sequences: bool = False  # fixed-length token inputs: runners right-pad shorter feeds
    fixed_batch: bool = False  # the converted graph has batch 1 (runners loop rows)
    static_int8: bool = True  # the backend may quantize it statically (else int8 targets build it dynamic)


class LazyFeeds(Sequence):
    """Calibration feeds made on demand from items (image paths, texts): re-iterable, one item in memory at a time."""

    def __init__(self, items: Sequence[Any], transform: Callable[[Any], Feed]) -> None:
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return LazyFeeds(self.items[index], self.transform)
        return self.transform(self.items[index])


@dataclass
class AccuracyCheck:
    """How a backend's own accuracy-aware quantization (NNCF accuracy control) scores a candidate."""

    metric: str
    max_drop: float
    items: list[Any]  # validation items
    transform: Callable[[Any], Feed]  # item -> feed
    validate: Callable[[Any, Iterable[Any]], float]  # (compiled model, items) -> metric


@dataclass
class Graph:
    """One graph of a run as backends see it: its FP32 ONNX, the quantized forms and what int8 builds need."""

    name: str
    fp32: Path
    kind: Literal["cnn", "transformer", "decoder"] = "cnn"
    quantized: dict[str, Quantized] = field(default_factory=dict)  # target precision -> ONNX form
    float_nodes: list[str] = field(default_factory=list)  # ONNX nodes the shared spec keeps float
    float_ops: list[str] = field(default_factory=list)  # ONNX op types kept float
    backend_float_nodes: list[str] | None = None  # a wider float scope for backends with their own quantizer (NNCF)
    searched_float_nodes: dict[str, list[str]] = field(default_factory=dict)  # backend -> ONNX nodes its own search left float (LiteRT)
    calibration: LazyFeeds | None = None  # the graph's calibration feeds (ONNX layout)
    ranges: dict[str, Any] = field(default_factory=dict)  # tensor -> shared calibrated Range (every placement's tensors)
    ranges_settings: dict[str, Any] = field(default_factory=dict)  # how ``ranges`` were calibrated (``calibration_settings``)
    ranges_model: Path | None = None  # the FP32 model ``ranges`` describe when not ``fp32`` (SmoothQuant rewrote its weights)
    trained_model: Path | None = None  # QAT: the FP32 model with the trained weights (for backends placing their own Q/DQ)
    trained_ranges: dict[str, Any] = field(default_factory=dict)  # QAT: ``ranges`` with the trained activation scales
    input_sizes: dict[str, list[int]] = field(default_factory=dict)  # input -> exported example shape (profile sizes of dynamic axes)
    spec_tensors: frozenset[str] = frozenset()  # the tensors the shared (ORT) spec quantizes
    torch: TorchSource | None = None
    accuracy: AccuracyCheck | None = None
    int8: str = "static"  # what int8 targets do with this graph: static | dynamic | float

    @property
    def single(self) -> bool:
        return self.name == "model"


@dataclass
class Run:
    """What a backend may read of the run: the recipe, the staging folder, threads and progress."""

    recipe: Recipe
    stage: Path
    progress: Callable[[str, int], Iterator[int]]

    @property
    def threads(self) -> int:
        return self.recipe.benchmark.threads

    def folder(self, backend: str) -> Path:
        path = self.stage / backend
        path.mkdir(exist_ok=True)
        return path


@dataclass
class Built:
    """One graph of one target built, or the reason it was not (e.g. TensorRT without a GPU)."""

    path: Path | None  # the artifact measured (its sha256 goes into the manifest)
    precision: str  # what this graph runs in within the target
    make_runner: Callable[[], Runner] | None = None
    files: list[Path] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    not_built: str | None = None
    notes: list[str] = field(default_factory=list)
    # not built, but its accuracy can be measured another way (TensorRT's graph run on the CPU): the runner, and how
    simulate: Callable[[], Runner] | None = None
    simulated_how: str | None = None

    @property
    def built(self) -> bool:
        return self.not_built is None


def file_name(graph: Graph, stem: str) -> str:
    """``model_int8.xml`` for a single-graph family, ``vision_int8.xml`` for a tower."""
    return stem if graph.single else stem.replace("model", graph.name, 1)


class Backend(abc.ABC):
    """One runtime: its precisions, files, recipe section, placement, availability, builder and runner."""

    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    suffixes: ClassVar[tuple[str, ...]] = ()
    config: ClassVar[type[BaseModel] | None] = None  # its recipe section, ``recipe.<name>``
    accuracy_control: ClassVar[bool] = False
    build_last: ClassVar[bool] = False  # e.g. LiteRT: litert-torch loads JAX, whose threads make a later fork unsafe
    needs_torch: ClassVar[bool] = False  # converts from a PyTorch module, not from ONNX
    install: ClassVar[str] = ""  # the extra that installs it, for messages
    runs_forms: ClassVar[bool] = False  # runs the family's quantized ONNX forms as they are (ONNX Runtime)
    wide_float_scope: ClassVar[bool] = False  # its int8 build starts from ``Graph.backend_float_nodes`` where set (NNCF)
    times_candidates: ClassVar[bool] = False  # ``candidate_runner`` prices search candidates in its own latency
    scores_candidates: ClassVar[bool] = False  # its candidates quantize with their own ranges: the search scores their loss on them
    # with an explicit budget (an absolute tuning loss) the search scores losses on this backend's own build too, built as
    # the target is (``candidate_runner(..., scoring=True)``): its quantizer's loss differs from the ORT Q/DQ form's (NNCF)
    scores_budgeted_candidates: ClassVar[bool] = False

    def check_recipe(self, recipe: Recipe) -> None:  # noqa: B027 (an optional hook)
        """Raise ``ValueError`` for recipe settings this backend cannot honour (called while the recipe is validated)."""

    def placement(self) -> Placement | None:
        """The Q/DQ placement int8 targets need from the shared ranges (None: the backend quantizes its own way)."""
        return None

    def placement_for(self, kind: str) -> Placement | None:
        """The placement int8 targets need for a graph of ``kind``: :meth:`placement` for CNNs; None (default) for
        transformer graphs, which the family quantizes itself. A backend that places transformer graphs from shared
        ranges (TensorRT) overrides this, and the job then calibrates those graphs' ranges for it."""
        return self.placement() if kind == "cnn" else None

    def available(self) -> str | None:
        """None when targets can be built here, else the reason they are reported as not built."""
        return None

    @abc.abstractmethod
    def build(self, graph: Graph, target: Target, run: Run) -> Built:
        """Build one graph for one target under ``run.stage / <backend>/``."""

    @abc.abstractmethod
    def runner(self, path: str | Path, threads: int | None = None, **options: Any) -> Runner:
        """A runner for a file this backend built (or any file with one of its suffixes)."""

    def candidate_runner(self, path: Path, float_nodes: list[str], graph: Graph, threads: int, recipe: Recipe) -> Runner | None:
        """A loaded runner of ``graph`` built as this backend's int8 engine with ``float_nodes`` left float (``path``:
        the candidate's Q/DQ ONNX), so ``quantization.search`` prices float groups in this backend's own latency.
        None (default): candidates cannot be timed here, and the backend takes ONNX Runtime's choice."""
        return None

    def candidate_cost(self, graph: Graph, recipe: Recipe) -> tuple[Any, str] | None:
        """(cost model, description) that prices this backend's search candidates where its engine cannot run here
        (TensorRT without a GPU): ``model.ms(int8 nodes, fp16 nodes)``. Its candidates use this backend's
        :meth:`placement`. None (default): no cost model."""
        return None
