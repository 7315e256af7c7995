"""Backend runners behind one contract: ``load``, ``inputs``/``outputs``, ``infer(dict) -> dict``, ``close``."""

from edgekit.runners.base import Runner, TensorMeta

__all__ = ["Runner", "TensorMeta", "make_runner"]


def make_runner(backend: str, model_path, threads: int | None = None) -> Runner:
    """Create the runner for ``backend`` (``onnxruntime``, ``openvino``; ``tensorrt`` needs an NVIDIA GPU)."""
    from edgekit.errors import EdgekitError

    if backend == "onnxruntime":
        from edgekit.runners.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(model_path, threads=threads)
    if backend == "openvino":
        from edgekit.runners.openvino import OpenVinoRunner

        return OpenVinoRunner(model_path, threads=threads)
    if backend == "tensorrt":
        from edgekit.runners.tensorrt import TensorRTRunner

        return TensorRTRunner(model_path)
    raise EdgekitError(f"unknown backend {backend!r}", fix="use one of: onnxruntime, openvino, tensorrt")
