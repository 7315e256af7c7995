"""The runner contract every backend implements (Polygraphy-style): load, metadata, ``infer``, close."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class TensorMeta:
    """Name, shape (``None`` or a string for dynamic dims) and numpy dtype of one model input or output."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype


class Runner(abc.ABC):
    """Runs one built model on one backend (Polygraphy's lifecycle), the same way for every backend:

    * ``infer(feed)`` loads the model when it is not loaded yet (runners load lazily; ``with runner:`` or ``load()``
      loads up front), then checks the feed once against the model's inputs -- names, dtype, rank and static dims --
      and raises one ``EdgekitError`` naming the input, what the model takes and the model file; then it calls
    * ``infer_impl(feed)``, the backend's run of a checked feed.

    The input metadata the check uses is read once after load and cached (a check costs microseconds); ``close``
    drops it, so a reloaded model is read again. Comparison of outputs lives elsewhere (``edgekit.evaluators``)."""

    backend: str = "abstract"

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

    def feed_inputs(self) -> list[TensorMeta]:
        """What ``infer`` accepts, as metadata: ``inputs`` unless the runner converts feeds itself (LiteRT loops rows
        on a batch-1 graph and pads token sequences, so those dims are dynamic here)."""
        return self.inputs

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once: input name -> array in, output name -> array out. Loads the model if needed, then refuses a feed
        whose names, ranks, static dims or dtypes differ from the model's inputs (one line naming the input)."""
        self.load()
        meta = self.__dict__.get("_feed_meta")
        if meta is None:
            meta = self.__dict__["_feed_meta"] = {m.name: m for m in self.feed_inputs()}
        check_feed(feed, meta, getattr(self, "model_path", None) or getattr(self, "engine_path", None))
        return self.infer_impl(feed)

    @abc.abstractmethod
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a feed ``infer`` has checked: every input present, with the model's dtype, rank and static dims."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the session/engine. Implementations end with ``super().close()``, which drops the cached input
        metadata."""
        self.__dict__.pop("_feed_meta", None)


def check_feed(feed: dict[str, np.ndarray], inputs: dict[str, TensorMeta], source: Any = None) -> None:
    """Raise ``EdgekitError`` when ``feed`` does not fit ``inputs``: names (missing or unexpected), then per input in
    model order its dtype (exactly the model's), rank and static dims (dynamic dims -- ``None``, a name, or a negative
    size -- match any size). ``source`` (the model file) prefixes the message."""
    if feed.keys() != inputs.keys():
        missing, extra = sorted(set(inputs) - set(feed)), sorted(set(feed) - set(inputs))
        what = "; ".join(p for p in (f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "") if p)
        raise EdgekitError(f"feed does not match the model's inputs ({what}; the model takes {sorted(inputs)})", source, "feed every model input by name")
    for name, meta in inputs.items():
        x = feed[name]
        dtype = getattr(x, "dtype", None)
        if not isinstance(dtype, np.dtype) or dtype != meta.dtype:  # not an array (list, torch tensor), or another dtype
            got = dtype if isinstance(dtype, np.dtype) else type(x).__name__
            raise EdgekitError(f"input {name!r} is {got}, the model takes {meta.dtype}", source, f"cast it with .astype(np.{meta.dtype.name})")
        shape = x.shape
        if len(shape) != len(meta.shape):
            raise EdgekitError(f"input {name!r} has rank {len(shape)} {tuple(shape)}, the model takes rank {len(meta.shape)} {meta.shape}", source,
                               "reshape the input")
        for axis, (got, want) in enumerate(zip(shape, meta.shape)):
            if got != want and isinstance(want, int) and want >= 0:
                raise EdgekitError(f"input {name!r} has size {got} on axis {axis} {tuple(shape)}, the model takes {want} {meta.shape}", source,
                                   "resize the input")
