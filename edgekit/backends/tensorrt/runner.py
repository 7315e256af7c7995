"""TensorRT runner (TensorRT 10/11 I/O-tensor API, cuda-python for device memory).

``load`` checks the engine's manifest (``<engine>.json``: TensorRT version, GPU compute capability, engine SHA-256)
before deserializing, so a stale or foreign engine fails with one clear line instead of a TensorRT crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.backends.tensorrt.engine import (
    TENSORRT_FIX,
    TENSORRT_MISSING,
    check_engine_manifest,
    current_device_info,
    import_cudart,
    import_tensorrt,
)
from edgekit.errors import EdgekitError
from edgekit.runners.base import Runner, TensorMeta


def _check(result: Any) -> Any:
    """cuda-python calls return ``(err, *values)``: raise on error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


class TensorRTRunner(Runner):
    """Runs a serialized TensorRT engine on GPU 0 (or a Jetson's GPU/DLA, as built)."""

    backend = "tensorrt"

    def __init__(self, engine_path: str | Path, check_manifest: bool = True, device_info: dict | None = None) -> None:
        self.engine_path = Path(engine_path)
        self.check_manifest = check_manifest
        self.device_info = device_info
        self.engine = None
        self.context = None
        self.stream = None
        self._trt = None
        self._cudart = None
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, bytes)
        self._inputs: list[TensorMeta] = []  # read once at load: infer_impl runs without asking the engine again
        self._outputs: list[TensorMeta] = []

    def load(self) -> None:
        if self.engine is not None:
            return
        try:
            trt = import_tensorrt()
        except ImportError as exc:
            raise EdgekitError(TENSORRT_MISSING, self.engine_path, TENSORRT_FIX) from exc
        try:
            cudart = import_cudart()
        except ImportError as exc:
            from edgekit.optional import missing

            raise missing("cuda-python", "tensorrt", "tensorrt targets: device memory", self.engine_path) from exc
        if self.check_manifest:
            check_engine_manifest(self.engine_path, self.device_info or current_device_info(trt.__version__))
        elif not self.engine_path.is_file():
            raise EdgekitError("TensorRT engine not found", self.engine_path, "check the path or build the engine first")
        self._trt, self._cudart = trt, cudart
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise EdgekitError("TensorRT cannot deserialize this engine", self.engine_path, "rebuild it on this device with this TensorRT version")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        self._inputs = self._meta(self._names(trt.TensorIOMode.INPUT))
        self._outputs = self._meta(self._names(trt.TensorIOMode.OUTPUT))

    def _names(self, mode) -> list[str]:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        return [n for n in names if self.engine.get_tensor_mode(n) == mode]

    def _meta(self, names: list[str]) -> list[TensorMeta]:
        trt = self._trt
        out = []
        for name in names:
            shape = tuple(None if d < 0 else int(d) for d in self.engine.get_tensor_shape(name))
            out.append(TensorMeta(name, shape, np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))))
        return out

    @property
    def inputs(self) -> list[TensorMeta]:
        self.load()
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorMeta]:
        self.load()
        return list(self._outputs)

    def _device(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for ``name`` (reused across calls, grown when needed)."""
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self._cudart.cudaFree(ptr))
            ptr, size = int(_check(self._cudart.cudaMalloc(max(nbytes, 1)))), max(nbytes, 1)
            self._buffers[name] = (ptr, size)
        return ptr

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, ctx = self._cudart, self.context
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = []  # keep host arrays alive until the stream is synchronized
        for meta in self._inputs:  # infer checked names, dtypes, ranks and static dims; the profile's range is TensorRT's
            arr = np.ascontiguousarray(feed[meta.name], dtype=meta.dtype)
            if not ctx.set_input_shape(meta.name, tuple(arr.shape)):
                raise EdgekitError(f"input {meta.name!r} shape {arr.shape} is outside the engine's profile {meta.shape}", self.engine_path, "rebuild with a matching dynamic_batch range")
            ptr = self._device(meta.name, arr.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
            ctx.set_tensor_address(meta.name, ptr)
            hosts.append(arr)
        results = {}
        for meta in self._outputs:
            shape = tuple(ctx.get_tensor_shape(meta.name))
            out = np.empty(shape, dtype=meta.dtype)
            ctx.set_tensor_address(meta.name, self._device(meta.name, out.nbytes))
            results[meta.name] = out
        if not ctx.execute_async_v3(int(self.stream)):
            raise EdgekitError("TensorRT execution failed (see the TensorRT log)", self.engine_path)
        for name, out in results.items():
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name][0], out.nbytes, d2h, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        del hosts
        return results

    def close(self) -> None:
        if self._cudart is not None:
            for ptr, _ in self._buffers.values():
                self._cudart.cudaFree(ptr)
            if self.stream is not None:
                self._cudart.cudaStreamDestroy(self.stream)
        self._buffers.clear()
        self.stream = None
        self.context = None
        self.engine = None
        self._inputs, self._outputs = [], []
        super().close()
