"""Backends: one package each (``onnxruntime``, ``openvino``, ``litert``, ``tensorrt``) holding builder and runner
side by side behind ``edgekit.backends.base.Backend``; listed in ``edgekit.registry``.

Quantization is computed once per run (``edgekit.quantization``); each backend places it its own way: ORT's fusable
Q/DQ, TensorRT's explicit-quantization Q/DQ, NNCF for OpenVINO, ai-edge-quantizer for LiteRT.
"""

from __future__ import annotations

from edgekit.backends.base import AccuracyCheck, Backend, Built, Graph, LazyFeeds, Quantized, Run, TorchSource

__all__ = ["AccuracyCheck", "Backend", "Built", "Graph", "LazyFeeds", "Quantized", "Run", "TorchSource"]
