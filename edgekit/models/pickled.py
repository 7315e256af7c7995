"""Pieces shared by edgekit's restricted unpicklers (YOLO ``.pt``, OpenAI's CLIP TorchScript archives).

Neither executes code named by a file: tensors are rebuilt from raw storage bytes, and any object of a class not
on an allow-list becomes an inert ``Record`` of its pickled state.
"""

from __future__ import annotations

from typing import Any

import torch

STORAGE_DTYPES = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class Record:
    """An inert stand-in for a pickled object whose class is not on the allow-list: only its state is kept."""

    __qualified__ = "record"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __getattr__(self, name: str) -> Any:  # only called for missing attributes
        state = self.__dict__.get("state")
        if isinstance(state, dict) and name in state:
            return state[name]
        raise AttributeError(name)


def record_class(qualname: str) -> type:
    """A ``Record`` subclass named after the pickled class ``qualname`` (``module.Name``)."""
    return type(qualname.replace(".", "_"), (Record,), {"__qualified__": qualname})
