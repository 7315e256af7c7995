"""The runner contract every backend implements (Polygraphy-style): load, metadata, ``infer``, close."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TensorMeta:
    """Name, shape (``None`` or a string for dynamic dims) and numpy dtype of one model input or output."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype


class Runner(abc.ABC):
    """Runs one built model on one backend (Polygraphy's lifecycle): ``infer`` loads the model when needed and checks
    the feed against the model's inputs once per call, for every backend; ``infer_impl`` only runs. Comparison of
    outputs lives elsewhere (``edgekit.evaluators``)."""

    backend: str = "abstract"
    flexible_shapes: bool = False  # the runner adapts static dims itself (LiteRT: row loop, sequence padding)

    def __enter__(self) -> Runner:
        self.load()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @abc.abstractmethod
    def load(self) -> None:
        """Create the session/engine. Idempotent."""

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorMeta]:
        """Input metadata, in model order."""

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorMeta]:
        """Output metadata, in model order."""

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once: input name -> array in, output name -> array out. Loads the model if needed, then refuses a feed
        whose names, ranks, static dims or dtypes differ from the model's inputs (one line naming the input)."""
        self.load()
        meta = self.__dict__.get("_checked_inputs")
        if meta is None:
            meta = self.__dict__["_checked_inputs"] = {m.name: m for m in self.inputs}
        check_feed(feed, meta, self.flexible_shapes, getattr(self, "model_path", None) or getattr(self, "engine_path", None))
        return self.infer_impl(feed)

    @abc.abstractmethod
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a checked feed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the session/engine."""


def check_feed(feed: dict[str, np.ndarray], inputs: dict[str, TensorMeta], flexible_shapes: bool, source: Any = None) -> None:
    """Raise ``EdgekitError`` when ``feed`` does not fit ``inputs``: names, then per input dtype, rank and static dims
    (dynamic dims -- ``None``, a name, or a negative size -- match anything)."""
    from edgekit.errors import EdgekitError

    missing, extra = sorted(set(inputs) - set(feed)), sorted(set(feed) - set(inputs))
    if missing or extra:
        what = "; ".join(p for p in (f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "") if p)
        raise EdgekitError(f"feed does not match the model's inputs ({what}; the model takes {sorted(inputs)})", source, "feed every model input by name")
    for name, meta in inputs.items():
        x = feed[name]
        dtype = getattr(x, "dtype", None)
        if dtype is None or np.dtype(dtype) != meta.dtype:
            raise EdgekitError(f"input {name!r} is {np.dtype(dtype) if dtype is not None else type(x).__name__}, the model takes {meta.dtype}", source,
                               f"cast it with .astype(np.{meta.dtype.name})")
        if flexible_shapes:
            continue
        shape = tuple(x.shape)
        if len(shape) != len(meta.shape):
            raise EdgekitError(f"input {name!r} has rank {len(shape)} {shape}, the model takes rank {len(meta.shape)} {meta.shape}", source, "reshape the input")
        for axis, (got, want) in enumerate(zip(shape, meta.shape)):
            if isinstance(want, int) and want >= 0 and got != want:
                raise EdgekitError(f"input {name!r} has size {got} on axis {axis} {shape}, the model takes {want} {meta.shape}", source, "resize the input")
