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
    """Runs one built model on one backend. Comparison of outputs lives elsewhere (``edgekit.evaluators``)."""

    backend: str = "abstract"

    def __enter__(self) -> "Runner":
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

    @abc.abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once: input name -> array in, output name -> array out."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the session/engine."""
