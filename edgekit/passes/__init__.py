"""Graph passes over ONNX models (constant folding, Conv fusions, cleanup), registered by name.

    model, results = run_passes(model, ["constant_folding", {"fuse_conv_bn": {}}, "eliminate_identity", "remove_unused"])
    fused, record = fuse_graph(model, passes, simplify=True, feeds=[{"images": x}], tolerance=1e-3)  # + verified in ORT
"""

from __future__ import annotations

import sys

import onnx

from edgekit.passes.base import GraphPass, PassConfig, PassResult, available_passes, get_pass, register_pass

# importing the modules registers the passes
from edgekit.passes import (  # noqa: E402,F401  isort: skip
    constant_folding,
    eliminate_identity,
    fuse_conv_bn,
    fuse_attention,
    fuse_conv_mul_add,
    onnxslim_pass,
    remove_unused,
    shape_inference,
)
from edgekit.passes.verify import apply_passes, build_passes, fuse_graph, pass_entry  # noqa: E402  isort: skip

__all__ = [
    "GraphPass", "PassConfig", "PassResult", "apply_passes", "available_passes", "build_passes", "fuse_graph", "get_pass",
    "pass_entry", "register_pass", "run_passes",
]


def run_passes(model: onnx.ModelProto, names: list[str | dict], progress: bool = False) -> tuple[onnx.ModelProto, list[PassResult]]:
    """Apply the passes in order to a copy of ``model``; each entry is a name or ``{name: {option: value}}``. No verification."""
    passes = build_passes(names)  # every entry is checked before any work
    log = (lambda r: print(f"  pass {r.summary()}", file=sys.stderr, flush=True)) if progress else None
    model, results = apply_passes(model, passes, log)
    if not passes:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    return model, results
