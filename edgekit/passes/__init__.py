"""Graph passes over ONNX models (constant folding, Conv fusions, cleanup), registered by name.

    model, results = run_passes(model, ["constant_folding", "fuse_conv_bn", "eliminate_identity", "remove_unused"])
"""

from __future__ import annotations

import sys
import time

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

__all__ = ["GraphPass", "PassConfig", "PassResult", "available_passes", "get_pass", "register_pass", "run_passes"]


def run_passes(
    model: onnx.ModelProto,
    names: list[str],
    progress: bool = False,
    configs: dict[str, dict] | None = None,
) -> tuple[onnx.ModelProto, list[PassResult]]:
    """Apply the named passes in order to a copy of ``model``; ``configs`` maps pass name -> options."""
    configs = configs or {}
    passes = [get_pass(name, configs.get(name)) for name in names]  # every name is checked before any work
    results: list[PassResult] = []
    for p in passes:
        g = model.graph
        before = (len(g.node), len(g.initializer))
        start = time.perf_counter()
        model = p.apply(model)
        result = PassResult(p.name, before[0], len(model.graph.node), before[1], len(model.graph.initializer), time.perf_counter() - start)
        results.append(result)
        if progress:
            print(f"  pass {result.summary()}", file=sys.stderr, flush=True)
    if not passes:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    return model, results
