"""Backend runners behind one contract: ``load``, ``inputs``/``outputs``, ``infer(dict) -> dict``, ``close``."""

from __future__ import annotations

from pathlib import Path

from edgekit.runners.base import Runner, TensorMeta

__all__ = ["BACKEND_BY_SUFFIX", "Runner", "TensorMeta", "make_runner", "runner_for_file"]

BACKEND_BY_SUFFIX = {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "tflite", ".engine": "tensorrt", ".plan": "tensorrt"}


def make_runner(backend: str, model_path, threads: int | None = None) -> Runner:
    """Create the runner for ``backend`` (``onnxruntime``, ``openvino``, ``tflite``; ``tensorrt`` needs an NVIDIA GPU)."""
    from edgekit.errors import EdgekitError

    if backend == "onnxruntime":
        from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(model_path, threads=threads)
    if backend == "openvino":
        from edgekit.backends.openvino.runner import OpenVinoRunner

        return OpenVinoRunner(model_path, threads=threads)
    if backend == "tflite":
        from edgekit.backends.litert.runner import LiteRTRunner

        runner = LiteRTRunner(model_path, threads=threads)
        runner.load()
        if len(runner.output_names) == 2:  # edgekit's detector layout: boxes, then scores
            runner.output_names = ["boxes", "scores"]
        return runner
    if backend == "tensorrt":
        from edgekit.backends.tensorrt.runner import TensorRTRunner

        return TensorRTRunner(model_path)
    raise EdgekitError(f"unknown backend {backend!r}", fix="use one of: onnxruntime, openvino, tflite, tensorrt")


def runner_for_file(model_path: str | Path, backend: str | None = None, threads: int | None = None) -> Runner:
    """The runner for a model file: ``backend`` when given, else chosen by suffix (.onnx, .xml, .tflite, .engine/.plan)."""
    from edgekit.errors import EdgekitError

    path = Path(model_path)
    backend = backend or BACKEND_BY_SUFFIX.get(path.suffix.lower())
    if backend is None:
        raise EdgekitError(f"cannot tell the backend of a '{path.suffix}' file", path, "pass --backend onnxruntime|openvino|tflite|tensorrt")
    return make_runner(backend, path, threads=threads)
