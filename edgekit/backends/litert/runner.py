"""LiteRT (TFLite) runner on ``ai-edge-litert`` with the XNNPACK CPU delegate.

The contract stays the ONNX one: NCHW float32 inputs in, float32 outputs out, so evaluators and
comparisons never see the backend. The runner transposes to the model's NHWC layout and applies the
model's own input/output quantization (scale, zero point) when a full-integer model has int8 I/O.

Token inputs (e.g. CLIP's text tower): integer inputs the model takes as int32 are cast from the contract's
int64; a batch-1 model fed several rows runs them one at a time (LiteRT graphs from litert-torch have a static
batch); with ``pad_sequences`` (on by default when an input is named ``attention_mask``), 2-D integer inputs shorter
than the model's static length are right-padded with 0, which is padding token 0 with mask 0: masked (or causal,
end-token pooled) models give the same outputs. Models converted with named inputs/outputs (litert-torch
``sample_kwargs``, dict outputs) get those names by default; inputs are matched to the model by name when the
model's signature has the contract's names, else by position.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runners.base import Runner, TensorMeta


class LiteRTRunner(Runner):
    """Runs a ``.tflite`` model. ``input_names`` maps the model's inputs to the contract's names, in order."""

    backend = "tflite"

    def __init__(
        self, model_path: str | Path, threads: int | None = None, input_names: list[str] | None = None, output_names: list[str] | None = None,
        pad_sequences: bool | None = None, channels_last: list[str] | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.threads = threads
        self.input_names = input_names
        self.output_names = output_names
        self.pad_sequences = pad_sequences
        self.channels_last = channels_last  # inputs the model takes NHWC (fed NCHW); None: every 4-D input
        self.interpreter = None
        self._in: list[dict] = []
        self._out: list[dict] = []

    def load(self) -> None:
        if self.interpreter is not None:
            return
        from edgekit.optional import require

        Interpreter = require("ai_edge_litert.interpreter", "tflite", "tflite targets").Interpreter
        if not self.model_path.is_file():
            raise EdgekitError("LiteRT model not found", self.model_path, "check the path or run `edgekit export` with a tflite target")
        try:
            self.interpreter = Interpreter(model_path=str(self.model_path), num_threads=self.threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EdgekitError(f"LiteRT cannot load this model ({str(exc).splitlines()[0][:200]})", self.model_path, "rebuild it with `edgekit export`") from exc
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()
        signature_in, signature_out = self._signature_names()
        if self.input_names and signature_in and sorted(self.input_names) == sorted(signature_in.values()):
            by_name = {signature_in[d["index"]]: d for d in self._in}
            self._in = [by_name[n] for n in self.input_names]
        if self.output_names and signature_out and sorted(self.output_names) == sorted(signature_out.values()):
            by_name = {signature_out[d["index"]]: d for d in self._out}
            self._out = [by_name[n] for n in self.output_names]
        self.input_names = self.input_names or [signature_in.get(d["index"], d["name"]) for d in self._in]
        self.output_names = self.output_names or [signature_out.get(d["index"], d["name"]) for d in self._out]
        if self.pad_sequences is None:
            self.pad_sequences = "attention_mask" in self.input_names

    def _signature_names(self) -> tuple[dict[int, str], dict[int, str]]:
        """Tensor index -> name of the model's single signature, when it names its inputs/outputs (litert-torch's
        positional ``args_<i>``/``output_<i>`` are not names); else empty."""
        signatures = self.interpreter.get_signature_list()
        if len(signatures) != 1:
            return {}, {}
        runner = self.interpreter.get_signature_runner(next(iter(signatures)))
        named = []
        for details, positional in ((runner.get_input_details(), r"args_\d+"), (runner.get_output_details(), r"output_\d+")):
            names = {int(d["index"]): n for n, d in details.items()}
            named.append({} if any(re.fullmatch(positional, n) for n in names.values()) else names)
        return named[0], named[1]

    def _nhwc(self, name: str, rank: int) -> bool:
        return rank == 4 and (self.channels_last is None or name in self.channels_last)

    def _nchw(self, name: str, shape) -> tuple:
        shape = tuple(int(d) for d in shape)
        return (shape[0], shape[3], shape[1], shape[2]) if self._nhwc(name, len(shape)) else shape

    @property
    def inputs(self) -> list[TensorMeta]:
        self.load()
        return [TensorMeta(n, self._nchw(n, d["shape"]), _contract_dtype(d)) for n, d in zip(self.input_names, self._in)]

    def feed_inputs(self) -> list[TensorMeta]:
        """What ``infer`` accepts: ``inputs`` (NCHW, float32 or int64 token ids -- the runner transposes, casts and
        quantizes), with the dims the runner adapts itself left dynamic: the batch when every model input has batch 1
        (rows run one at a time), and the length of 2-D integer inputs with ``pad_sequences`` (shorter ones padded;
        ``_fit`` refuses longer ones)."""
        row_loop = all(len(d["shape"]) and int(d["shape"][0]) == 1 for d in self._in)
        metas = []
        for meta, detail in zip(self.inputs, self._in):
            shape = list(meta.shape)
            if row_loop and shape:
                shape[0] = None
            if self.pad_sequences and len(shape) == 2 and np.dtype(detail["dtype"]).kind in "iu":
                shape[1] = None
            metas.append(TensorMeta(meta.name, tuple(shape), meta.dtype))
        return metas

    @property
    def outputs(self) -> list[TensorMeta]:
        self.load()
        return [TensorMeta(n, tuple(int(x) for x in d["shape"]), np.dtype(np.float32)) for n, d in zip(self.output_names, self._out)]

    @property
    def io_dtypes(self) -> dict[str, str]:
        """The model's own input/output element types (``int8`` for a full-integer model with integer I/O)."""
        self.load()
        return {**{n: np.dtype(d["dtype"]).name for n, d in zip(self.input_names, self._in)}, **{n: np.dtype(d["dtype"]).name for n, d in zip(self.output_names, self._out)}}

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = [self._fit(name, np.asarray(feed[name]), detail) for name, detail in zip(self.input_names, self._in)]
        rows = {int(x.shape[0]) for x in arrays if x.ndim}
        batch_one = all(len(d["shape"]) and int(d["shape"][0]) == 1 for d in self._in)
        if batch_one and len(rows) > 1:
            raise EdgekitError(f"inputs have different batch sizes {sorted(rows)}", self.model_path, "feed the same number of rows to every input")
        if len(rows) == 1 and (n := rows.pop()) > 1 and batch_one:
            outs = [self._invoke([x[i : i + 1] for x in arrays]) for i in range(n)]  # static batch 1: one row at a time
            return {name: np.concatenate([o[name] for o in outs]) for name in self.output_names}
        return self._invoke(arrays)

    def _fit(self, name: str, x: np.ndarray, detail: dict) -> np.ndarray:
        if self._nhwc(name, x.ndim):
            return x.transpose(0, 2, 3, 1)
        length = int(detail["shape"][1]) if len(detail["shape"]) == 2 else None
        if self.pad_sequences and x.ndim == 2 and length and x.shape[1] != length and np.dtype(detail["dtype"]).kind in "iu":
            if x.shape[1] > length:
                raise EdgekitError(f"input {name!r} has {x.shape[1]} positions; this LiteRT model takes at most {length}", self.model_path, "truncate the sequence to the model's context length")
            return np.pad(x, ((0, 0), (0, length - x.shape[1])))
        return x

    def _invoke(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        for x, detail in zip(arrays, self._in):
            self.interpreter.set_tensor(detail["index"], _quantize(x, detail))
        self.interpreter.invoke()
        return {name: _dequantize(self.interpreter.get_tensor(d["index"]), d) for name, d in zip(self.output_names, self._out)}

    def close(self) -> None:
        self.interpreter = None
        super().close()


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f" or not _quantized(detail):  # float, or plain integers (token ids as int32)
        return np.ascontiguousarray(x, dtype=dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _quantized(detail: dict) -> bool:
    return bool(detail["quantization"][0])  # scale 0: not a quantized tensor


def _contract_dtype(detail: dict) -> np.dtype:
    """float32, except plain integer inputs (token ids, masks), which the contract passes as int64."""
    return np.dtype(np.int64) if np.dtype(detail["dtype"]).kind in "iu" and not _quantized(detail) else np.dtype(np.float32)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]).kind == "f" or not _quantized(detail):
        return y.astype(np.float32, copy=True)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
