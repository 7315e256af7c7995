"""ONNX Runtime CPU runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runners.base import Runner, TensorMeta

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX model with ONNX Runtime's CPU execution provider."""

    backend = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        threads: int | None = None,
        providers: list[str] | None = None,
        optimization_level: str = "all",
        profile: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        self.optimization_level = optimization_level
        self.profile = profile
        self.session = None

    def load(self) -> None:
        if self.session is not None:
            return
        from edgekit.optional import require

        ort = require("onnxruntime", "onnxruntime", "onnxruntime targets")
        if not self.model_path.is_file():
            raise EdgekitError("ONNX model not found", self.model_path, "check the path or run `edgekit export` first")
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization_level]
        options.enable_profiling = self.profile
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.model_path), options, providers=self.providers)
        except Exception as exc:  # ORT raises several exception types for bad models
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EdgekitError(
                f"ONNX Runtime cannot load this model ({first[:200]})",
                self.model_path,
                "re-export the model with `edgekit export`, or check that the file is a complete ONNX model",
            ) from exc

    def _meta(self, nodes) -> list[TensorMeta]:
        return [TensorMeta(n.name, tuple(n.shape), np.dtype(_ORT_TYPES.get(n.type, np.float32))) for n in nodes]

    @property
    def inputs(self) -> list[TensorMeta]:
        self.load()
        return self._meta(self.session.get_inputs())

    @property
    def outputs(self) -> list[TensorMeta]:
        self.load()
        return self._meta(self.session.get_outputs())

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        values = self.session.run(names, feed)
        return dict(zip(names, values))

    def end_profiling(self) -> str | None:
        """Stop ORT's profiler and return the trace file path (when ``profile=True``)."""
        return self.session.end_profiling() if self.session is not None and self.profile else None

    def close(self) -> None:
        self.session = None
        super().close()
