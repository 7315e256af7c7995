"""Int8 embedding tables: a large float ``Gather`` table stored as int8 rows with one float scale per row.

``Gather(table, ids)`` becomes ``Gather(table_int8, ids) -> Cast(float) -> Mul(Gather(row_scales, ids))``, standard
ONNX ops every backend runs. Only the gathered rows are dequantized, so the cost per call is a few hundred values;
the table (CLIP's 49408 x 512 token embedding is most of the text tower's bytes) shrinks 4x.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

MIN_ELEMENTS = 1 << 16  # smaller tables (position embeddings) are not worth it


def quantize_embedding_tables(model: onnx.ModelProto, min_elements: int = MIN_ELEMENTS) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A copy of ``model`` whose large 2-D float Gather tables (axis 0) are int8 per row; returns it and the settings."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    nodes, tables, saved = [], [], 0
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or axis != 0 or len(table.dims) != 2 or table.data_type != onnx.TensorProto.FLOAT or np.prod(table.dims) < min_elements:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(table).astype(np.float64)
        scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12) / 127.0
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        base = node.name or node.output[0]
        q_name, s_name = f"{table.name}_int8", f"{table.name}_row_scale"
        if q_name not in inits:
            graph.initializer.extend([numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale.astype(np.float32), s_name)])
            inits[q_name] = inits[s_name] = None
            tables.append(table.name)
            saved += w.size * 3
        ids, result = node.input[1], node.output[0]
        nodes += [
            helper.make_node("Gather", [q_name, ids], [f"{base}_rows_int8"], name=f"{base}_int8", axis=0),
            helper.make_node("Gather", [s_name, ids], [f"{base}_row_scales"], name=f"{base}_scales", axis=0),
            helper.make_node("Cast", [f"{base}_rows_int8"], [f"{base}_rows"], name=f"{base}_cast", to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [f"{base}_rows", f"{base}_row_scales"], [result], name=f"{base}_dequantize"),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return out, {"tables": tables, "weights": "int8 symmetric per row", "bytes_saved": int(saved)}
