"""LiteRT static int8 of a transformer graph's weight FULLY_CONNECTED ops (int8 per-channel weights, int8
activations, MinMax ranges on the graph's calibration feeds), with the ops the graph names dynamic-range int8 (a
static range on CLIP's attention output cost 2 points of minimum embedding cosine on TinyCLIP); LayerNorm, softmax,
GELU, the attention BATCH_MATMULs and the patch conv stay float, as in the ONNX int8 graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.backends.base import Graph, Run


def quantize_fully_connected(fp32: Path, out: Path, graph: Graph, run: Run) -> dict[str, Any]:
    """Static int8 of the weight FULLY_CONNECTED ops into ``out`` (``graph.torch.dynamic_patterns``: dynamic instead)."""
    from edgekit.artifacts import atomic_path
    from edgekit.backends.litert.builder import SIGNATURE, calibration_feeds, quiet_unless_interactive, require
    from edgekit.errors import EdgekitError
    from edgekit.profiling.device import package_version

    require("ai_edge_quantizer")
    from ai_edge_quantizer import qtyping, quantizer

    fc = qtyping.TFLOperationName.FULLY_CONNECTED
    q = quantizer.Quantizer(str(fp32))
    q.add_static_config(regex=".*", operation_name=fc, activation_num_bits=8, weight_num_bits=8)
    for regex in graph.torch.dynamic_patterns:
        q.add_dynamic_config(regex=regex, operation_name=fc, num_bits=8)  # the later config wins for these ops
    feeds = calibration_feeds(fp32, graph, run, f"calibrate tflite:int8 {graph.name}")
    with quiet_unless_interactive():  # ai-edge-quantizer's tqdm bars
        calibration = q.calibrate({SIGNATURE: feeds}, num_threads=run.threads or 1)
        result = q.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
    with atomic_path(out) as tmp:
        tmp.write_bytes(bytes(result.quantized_model))
    modes = fully_connected_modes(out)
    if not modes.get("static"):
        raise EdgekitError(f"no static int8 FULLY_CONNECTED op in the {graph.name} graph ({modes})")
    return {
        "tool": "ai-edge-quantizer",
        "version": package_version("ai-edge-quantizer"),
        "recipe": "static int8 on the weight FULLY_CONNECTED ops (int8 per-channel symmetric weights, int8 asymmetric activations), "
        "except the attention out_proj ops: dynamic-range int8 (int8 weights, activations quantized at run time); "
        "LayerNorm, softmax, GELU, the attention BATCH_MATMULs and the patch conv stay float",
        "why_out_proj_dynamic": "a static MinMax range on the attention output cost TinyCLIP 2 points of minimum image-embedding cosine "
        "(0.979 on 24 COCO images with 109 calibration images); dynamic there: 0.9993",
        "fully_connected": modes,
        "calibration": {"samples": len(feeds), "method": "ai-edge-quantizer's moving-average MinMax over the graph's calibration images"},
        "quantization_recipe": result.recipe,
    }


def fully_connected_modes(path: Path) -> dict[str, int]:
    """How the model's FULLY_CONNECTED ops run: ``static`` (int8 input and weights), ``dynamic`` (float input, int8
    weights), ``float`` (float or fp16-dequantized weights)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    model = tfl_flatbuffer_utils.read_model(str(path))
    int8, counts = schema.TensorType.INT8, {"static": 0, "dynamic": 0, "float": 0}
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.FULLY_CONNECTED:
                continue
            x, w = (graph.tensors[i].type for i in op.inputs[:2])
            counts["float" if w != int8 else "static" if x == int8 else "dynamic"] += 1
    return counts


