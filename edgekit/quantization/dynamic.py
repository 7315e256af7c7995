"""Dynamic INT8 for weight MatMuls (transformers): a thin wrapper over ``onnxruntime.quantization.quantize_dynamic``.

Weights of MatMul nodes whose second input is an initializer (and of Gemm nodes, which ORT's dynamic mode rewrites
to MatMul + Add first) are stored as int8 (symmetric; per tensor, or per output channel with ``per_channel``);
activations are quantized to uint8 at run time, per tensor, from each call's own min/max (``DynamicQuantizeLinear``
-> ``MatMulInteger``; ORT fuses these into ``DynamicQuantizeMatMul``, or ``MatMulIntegerToFloat`` behind one shared
``DynamicQuantizeLinear`` for Q/K/V, at session load). No calibration data.

Things this wrapper takes care of:

* ``op_types_to_quantize=["MatMul"]`` and ``MatMulConstBOnly``: activation x activation MatMuls (attention scores,
  attention x V) stay float, as do Gather/Attention/EmbedLayerNormalization, which ORT's default op list would touch.
* ``keep_float`` holds fnmatch patterns over node names (``*`` also crosses ``/``); a pattern that matches no node
  is an error (a typo would otherwise silently quantize everything). ORT renames a Gemm ``X`` to ``X_MatMul``
  before quantizing, so a kept-float Gemm is excluded under both names.
* The output is written atomically (temp file beside it, then rename) and is byte-identical across runs.

ORT's pre-processing (``quant_pre_process``: symbolic shape inference, ORT graph optimization, ONNX shape
inference) is not run. On a Hugging Face BERT export, symbolic shape inference fails ("Incomplete symbolic shape
inference", from the position-ids slice ``Min(512, seq)``, leaving its temp files in the working directory)
unless ``auto_merge=True``; with ``auto_merge`` it only folds Constants and shape arithmetic, the 48 MatMuls
and their names are unchanged, and quantizing its output gave the same embedding cosine (per channel, 100 COCO
captions: 0.99460 vs 0.99458 without it). ``quantize_dynamic`` runs ONNX shape inference itself. ORT therefore logs
"Please consider to run pre-processing"; that one message is suppressed here. ORT's transformer-optimizer route
(fusing Attention to quantize it as ``QAttention``) is a different recipe, not this one.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path

import onnx

from edgekit.artifacts import atomic_path
from edgekit.errors import EdgekitError

WEIGHT_OPS = ("MatMul", "Gemm")


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "consider to run pre-processing" not in record.getMessage()


def _weight_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul/Gemm nodes of the main graph whose weight (input 1) is an initializer (what MatMulConstBOnly quantizes)."""
    constants = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in WEIGHT_OPS and len(n.input) > 1 and n.input[1] in constants]


def matching_nodes(model: onnx.ModelProto, patterns: list[str]) -> list[str]:
    """Names of the nodes matching any fnmatch ``pattern`` (case-sensitive); error for a pattern matching none."""
    names = [n.name for n in model.graph.node]
    matched: list[str] = []
    for pattern in patterns:
        hits = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise EdgekitError(f"keep_float pattern {pattern!r} matches no node", fix="check the node names (e.g. with netron or onnx.load(...).graph.node)")
        matched.extend(h for h in hits if h not in matched)
    return matched


def quantize_dynamic_matmul(model_path: Path, out_path: Path, keep_float: list[str] | None = None, per_channel: bool = False,
                            reduce_range: bool | None = None) -> dict:
    """Quantize the weight MatMuls (and Gemms) of ``model_path`` to int8 with dynamic uint8 activations; write ``out_path``.

    Returns the settings for a manifest: tool, op types, weight/activation types, per_channel, ORT version, the
    patterns kept float, how many weight MatMul/Gemm nodes they excluded and how many nodes were quantized.
    """
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if reduce_range is None:  # 7-bit weights where x86 int8 pair sums saturate (no VNNI): ORT's own advice
        from edgekit.profiling.device import int8_pair_sums_saturate

        reduce_range = int8_pair_sums_saturate()

    model_path, out_path = Path(model_path), Path(out_path)
    if not model_path.is_file():
        raise EdgekitError("ONNX model not found", model_path, "export the model first")
    model = onnx.load(str(model_path), load_external_data=False)
    patterns = list(keep_float or [])
    excluded_all = matching_nodes(model, patterns)
    weight_nodes = {n.name: n for n in _weight_nodes(model)}
    excluded = [name for name in excluded_all if name in weight_nodes]
    nodes_to_exclude = list(excluded_all)
    nodes_to_exclude += [f"{name}_MatMul" for name in excluded if weight_nodes[name].op_type == "Gemm"]  # ORT's Gemm -> MatMul rewrite
    del model

    root = logging.getLogger()
    hint_filter = _DropPreprocessHint()
    root.addFilter(hint_filter)
    try:
        with atomic_path(out_path) as tmp:
            quantize_dynamic(
                model_path,
                tmp,
                op_types_to_quantize=["MatMul"],  # Gemm is rewritten to MatMul (+ Add) by ORT's dynamic mode first
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=nodes_to_exclude,
                extra_options={"MatMulConstBOnly": True},
            )
            quantized = onnx.load(str(tmp), load_external_data=False)
    finally:
        root.removeFilter(hint_filter)

    ops = [n.op_type for n in quantized.graph.node]
    return {
        "tool": "onnxruntime.quantization.quantize_dynamic",
        "op_types": list(WEIGHT_OPS),
        "weights": "int8 symmetric, " + ("per output channel" if per_channel else "per tensor"),
        "activations": "uint8 asymmetric per tensor, computed per call (DynamicQuantizeLinear)",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "matmul_const_b_only": True,
        "preprocess": "none (see edgekit.quantization.dynamic)",
        "onnxruntime_version": onnxruntime.__version__,
        "keep_float": patterns,
        "weight_nodes": len(weight_nodes),
        "excluded_nodes": len(excluded),
        "excluded_node_names": excluded,
        "quantized_nodes": ops.count("MatMulInteger"),
    }
