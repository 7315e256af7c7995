"""ONNX Runtime builds: nothing to convert; a target runs the graph's FP32 ONNX or its quantized form."""

from __future__ import annotations

from edgekit.backends.base import Built, Graph, Run
from edgekit.targets import Target


def build(graph: Graph, target: Target, run: Run) -> Built:
    from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner

    form = graph.quantized.get(target.precision) if target.quantized else None
    path = form.path if form else graph.fp32
    threads = run.threads
    settings = {"execution_provider": "CPUExecutionProvider", "graph_optimization_level": "all", "intra_op_threads": threads}
    return Built(path, form.mode if form else "fp32", lambda: OnnxRuntimeRunner(path, threads=threads), [path], settings)
