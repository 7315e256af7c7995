"""ONNX float scopes as ai-edge-quantizer scopes: the same modules kept float in the ``.tflite`` model.

The ``.tflite`` graph is converted from the PyTorch module, not from the ONNX file, but both name what they compute
after the module that computed it. The exporter writes ``/model.2/m/m.0/cv1/conv/Conv``; litert-torch writes the
op's output tensor ``.../YoloModel_model/C3_2/Sequential_m/Bottleneck_0/Conv_cv1/Conv2d_conv;2`` (``Class_attr`` per
module, the attribute after the last ``_``), and ai-edge-quantizer matches its recipe regexes against an op's output
tensor names (its "scope"). So an ONNX node maps to the regex of the ops *directly* in the same module: its module
path segments, in order, each ending in ``_<attr>``, then ``;``. The regex starts at the scope's beginning with the
segments every op of the ``.tflite`` graph shares (the wrappers the backend added around the module the ONNX was
exported from: :func:`scope_prefix`), so ``model.2.cv1`` never matches inside ``model.6.m.2.cv1``, and it reads only
the first fused location: litert-torch fuses a SiLU's location with its producer's (``..._act;;..._act;``), and only
the first names the op's own module.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from pathlib import Path

import onnx

from edgekit.tuning.groups import _path


def module_path(node_name: str) -> list[str]:
    """``/model.2/m/m.0/cv1/conv/Conv`` -> ``["model", "2", "m", "0", "cv1", "conv"]`` (the op's own module)."""
    return [part for component in _path(node_name) for part in component.split(".") if part]


def scope_prefix(tflite_path: str | Path) -> str:
    """The path segments (each ending in ``/``) that the first location of every op's scope starts with."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    model = fu.read_model(str(tflite_path))
    common: list[str] | None = None
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            first = fu.get_op_scope(op, subgraph.tensors).split(";")[0]
            if "/" not in first:  # the signature's own output ops (serving_default_*)
                continue
            parts = first.split("/")[:-1]
            common = parts if common is None else os.path.commonprefix([common, parts])
    return "".join(f"{p}/" for p in common or [])


def module_regex(path: list[str], prefix: str = "") -> str:
    """The ai-edge-quantizer scope regex of the ops computed directly in the module at ``path``. A container followed by
    an index (``m`` in ``m.0``) may be missing: a ``ModuleList`` is never called, so torch.export records no frame
    for it (``Detect_24/Conv2d_0``), while a called ``Sequential`` keeps one (``Sequential_m/Bottleneck_0``)."""
    out = ""
    for part, nxt in zip(path, [*path[1:], ""]):
        segment = rf"[^/;]*_{re.escape(part)}"
        out += rf"(?:{segment}/)?" if nxt.isdigit() and not part.isdigit() else segment + ("/" if nxt else ";")
    return f"^{re.escape(prefix)}{out}"


def scope_regexes(model: onnx.ModelProto, patterns: Iterable[str], prefix: str) -> list[str]:
    """Sorted, unique regexes for the modules of every node matching the ``float_nodes`` ``patterns`` (fnmatch, as
    the Q/DQ placement reads them), under the ``.tflite`` graph's :func:`scope_prefix`. Nodes without a module path
    (``Conv_12``, a bare graph) map to nothing."""
    patterns = list(patterns)
    out = set()
    for node in model.graph.node:
        if node.name and any(fnmatch.fnmatchcase(node.name, p) for p in patterns):
            path = module_path(node.name)
            if len(path) > 1 or "/" in node.name:
                out.add(module_regex(path, prefix))
    return sorted(out)
