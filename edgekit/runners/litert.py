"""LiteRT (TFLite) runner on ``ai-edge-litert`` with the XNNPACK CPU delegate.

The contract stays the ONNX one: NCHW float32 inputs in, float32 outputs out, so evaluators and
comparisons never see the backend. The runner transposes to the model's NHWC layout and applies the
model's own input/output quantization (scale, zero point) when a full-integer model has int8 I/O.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runners.base import Runner, TensorMeta


class LiteRTRunner(Runner):
    """Runs a ``.tflite`` model. ``input_names`` maps the model's inputs to the contract's names, in order."""

    backend = "tflite"

    def __init__(self, model_path: str | Path, threads: int | None = None, input_names: list[str] | None = None, output_names: list[str] | None = None) -> None:
        self.model_path = Path(model_path)
        self.threads = threads
        self.input_names = input_names
        self.output_names = output_names
        self.interpreter = None
        self._in: list[dict] = []
        self._out: list[dict] = []

    def load(self) -> None:
        if self.interpreter is not None:
            return
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise EdgekitError("ai-edge-litert is not installed", fix='pip install -e ".[tflite]"') from exc
        if not self.model_path.is_file():
            raise EdgekitError("LiteRT model not found", self.model_path, "check the path or run `edgekit export` with a tflite target")
        try:
            self.interpreter = Interpreter(model_path=str(self.model_path), num_threads=self.threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EdgekitError(f"LiteRT cannot load this model ({str(exc).splitlines()[0][:200]})", self.model_path, "rebuild it with `edgekit export`") from exc
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()
        self.input_names = self.input_names or [d["name"] for d in self._in]
        self.output_names = self.output_names or [d["name"] for d in self._out]

    @staticmethod
    def _nchw(shape) -> tuple:
        shape = tuple(int(d) for d in shape)
        return (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else shape

    @property
    def inputs(self) -> list[TensorMeta]:
        self.load()
        return [TensorMeta(n, self._nchw(d["shape"]), np.dtype(np.float32)) for n, d in zip(self.input_names, self._in)]

    @property
    def outputs(self) -> list[TensorMeta]:
        self.load()
        return [TensorMeta(n, tuple(int(x) for x in d["shape"]), np.dtype(np.float32)) for n, d in zip(self.output_names, self._out)]

    @property
    def io_dtypes(self) -> dict[str, str]:
        """The model's own input/output element types (``int8`` for a full-integer model with integer I/O)."""
        self.load()
        return {**{n: np.dtype(d["dtype"]).name for n, d in zip(self.input_names, self._in)}, **{n: np.dtype(d["dtype"]).name for n, d in zip(self.output_names, self._out)}}

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.load()
        for name, detail in zip(self.input_names, self._in):
            x = np.asarray(feed[name])
            if x.ndim == 4:
                x = x.transpose(0, 2, 3, 1)
            self.interpreter.set_tensor(detail["index"], _quantize(x, detail))
        self.interpreter.invoke()
        return {name: _dequantize(self.interpreter.get_tensor(d["index"]), d) for name, d in zip(self.output_names, self._out)}

    def close(self) -> None:
        self.interpreter = None


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return np.ascontiguousarray(x, dtype=dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f":
        return y.astype(np.float32, copy=True)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
