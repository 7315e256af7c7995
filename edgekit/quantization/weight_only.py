"""Weight-only INT8/INT4 for decoder MatMuls: a thin wrapper over ONNX Runtime's ``MatMulNBitsQuantizer``.

Each MatMul whose weight is an initializer becomes one ``com.microsoft.MatMulNBits``: the weight is stored as
``bits``-bit integers in blocks of ``block_size`` along the input dimension, each block with its own scale (and zero
point when asymmetric), and dequantized inside the kernel. Activations stay float unless ``accuracy_level`` 4, which
lets the CPU kernel quantize them to int8 on the fly (faster, slightly less exact). No calibration data
(round-to-nearest). Nodes named in ``exclude`` (e.g. the lm_head) keep float weights. Written atomically; the bytes
are identical across runs (tested).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from edgekit.artifacts import atomic_path


def _quantizer_classes():
    """ORT's quantizer classes; its module calls ``logging.basicConfig(level=INFO)`` on import, which would turn on
    INFO logging for every library: the root logger is put back as it was."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    root.setLevel(level)
    root.handlers[:] = handlers
    return DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    constants = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in constants]


def output_matmuls(model: onnx.ModelProto, output: str) -> list[str]:
    """Names of the weight MatMuls producing graph output ``output`` (the lm_head of a decoder graph)."""
    return [n.name for n in weight_matmuls(model) if output in n.output]


def quantize_weight_only(src: str | Path, dst: str | Path, bits: int = 4, block_size: int = 32, symmetric: bool = True,
                         accuracy_level: int | None = None, exclude: list[str] | None = None) -> dict[str, Any]:
    """Write ``src`` with its weight MatMuls as ``MatMulNBits`` into ``dst``; returns the settings for the manifest."""
    DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer = _quantizer_classes()
    model = onnx.load(str(src))
    exclude = list(exclude or [])
    targets = [n.name for n in weight_matmuls(model) if n.name not in exclude]
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level, bits=bits)
    logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = logger.level
    logger.setLevel(logging.WARNING)  # one INFO line per node otherwise
    try:
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level,
                                         nodes_to_exclude=exclude, algo_config=config)
        quantizer.process()
    finally:
        logger.setLevel(level)
    out = quantizer.model.model
    quantized = sum(1 for n in out.graph.node if n.op_type == "MatMulNBits")
    with atomic_path(Path(dst)) as tmp:
        onnx.save(out, str(tmp))
    return {"mode": f"weight_only_int{bits}", "op": "MatMulNBits", "bits": bits, "block_size": block_size, "symmetric": symmetric,
            "accuracy_level": accuracy_level, "float_matmuls": exclude, "quantized_matmuls": quantized, "candidate_matmuls": len(targets),
            "algorithm": "round to nearest (onnxruntime MatMulNBitsQuantizer, DefaultWeightOnlyQuantConfig)"}


def weight_only_builder(src: str | Path, bits: int, block_size: int = 32, symmetric: bool = True,
                        accuracy_level: int | None = None) -> Callable[[list[str], Path], None]:
    """A search candidate builder (:class:`edgekit.tuning.sensitivity.Candidates`): ``(float node patterns, out)``
    writes ``src`` weight-only quantized with the weight MatMuls matching the patterns (fnmatch) left float."""
    model = onnx.load(str(src))
    names = [n.name for n in weight_matmuls(model)]

    def build(float_nodes: list[str], out: Path) -> None:
        exclude = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in float_nodes)]
        quantize_weight_only(src, out, bits, block_size, symmetric, accuracy_level, exclude)

    return build
