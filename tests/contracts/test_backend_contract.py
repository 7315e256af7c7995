"""The backend contract, for every registered backend (``edgekit.registry.backend_names()``, entry points included):
one tiny Conv + MatMul graph built through ``backend.build(graph, target, run)`` for each precision the backend
builds from the graph itself (family-made ONNX forms, such as a VLM decoder's int4, are skipped with the reason).

Built: an artifact with one of the backend's suffixes, files that exist, a runner that loads, whose input/output
metadata match the graph, whose ``infer`` gives the graph's outputs (names, shapes, values near FP32), and that
closes. Not built: a reason, as the job reports it (TensorRT here: no GPU; its Q/DQ ONNX still lints clean).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from pydantic import BaseModel

from edgekit import registry
from edgekit.backends.base import Backend, Built
from edgekit.config import Strict
from edgekit.targets import Target

# how close each precision's outputs stay to FP32 on the tiny graph (cosine of the logits)
COSINE = {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.99, "int8": 0.95, "dynamic": 0.95, "int4": 0.9}


def family_made(backend: Backend, precision: str) -> str | None:
    """Why a precision needs a form only a family makes, or None (the backend builds it from the graph)."""
    if backend.runs_forms and precision not in ("fp32", "int8"):
        return f"{backend.name}:{precision} runs a family-made ONNX form (e.g. VLM decoders' weight-only {precision})"
    return None


def cases() -> list:
    out = []
    for name in registry.backend_names():
        backend = registry.backend(name)
        for precision in backend.precisions:
            reason = family_made(backend, precision)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            out.append(pytest.param(name, precision, marks=marks, id=f"{name}:{precision}"))
    return out


def static_shape(shape) -> tuple:
    return tuple(d if isinstance(d, int) else None for d in shape)


@pytest.mark.parametrize("name", registry.backend_names())
def test_declaration(name, tiny):
    """Name, precisions, suffixes, recipe section, placement and recipe check as the registry and recipes use them."""
    from edgekit.quantization.placement import Placement

    backend = registry.backend(name)
    assert isinstance(backend, Backend) and backend.name == name and registry.backend(name) is backend
    assert backend.precisions and "fp32" in backend.precisions and len(set(backend.precisions)) == len(backend.precisions)
    assert all(s.startswith(".") and s == s.lower() for s in backend.suffixes)
    assert all(registry.backend_for_suffix(s) is backend for s in backend.suffixes)
    recipe = tiny.job.recipe
    if backend.config is not None:
        assert issubclass(backend.config, Strict) and isinstance(getattr(recipe, name), backend.config)
    else:
        assert not isinstance(getattr(recipe, name, None), BaseModel)
    assert backend.placement() is None or isinstance(backend.placement(), Placement)
    backend.check_recipe(recipe)  # the tiny recipe asks for nothing unusual
    reason = backend.available()
    assert reason is None or (isinstance(reason, str) and reason.strip())


@pytest.mark.parametrize(("name", "precision"), cases())
def test_build(name, precision, tiny):
    backend = registry.backend(name)
    target = Target.parse(f"{name}:{precision}")
    reason = backend.available()
    if reason is not None:  # the job reports every graph of the target as not built, with this reason
        assert isinstance(reason, str) and reason.strip()
        pytest.skip(f"{name} not available here: {reason}")
    built = backend.build(tiny.graph, target, tiny.job.run)
    assert isinstance(built, Built) and isinstance(built.precision, str) and built.precision
    assert all(Path(f).is_file() for f in built.files), [str(f) for f in built.files if not Path(f).is_file()]
    if not built.built:
        assert isinstance(built.not_built, str) and built.not_built.strip()
        assert built.make_runner is None or built.path is not None
        if name == "tensorrt":
            check_tensorrt_not_built(built, precision)
        return
    assert built.path is not None and built.path.is_file() and built.path in built.files
    assert built.path.suffix in backend.suffixes and built.make_runner is not None
    check_runner(built.make_runner(), precision, tiny)
    # the backend's own runner for a file it built: the same values; the contract's names where the file keeps them
    # (a .tflite converted from a module returning a tensor names its output by position)
    check_runner(backend.runner(built.path, threads=1), precision, tiny, names=name != "tflite")


def check_runner(runner, precision: str, tiny, names: bool = True) -> None:
    graph = onnx.load(tiny.graph.fp32).graph
    runner.load()
    runner.load()  # idempotent
    try:
        assert len(runner.inputs) == len(graph.input) and len(runner.outputs) == len(graph.output)
        if names:
            assert [m.name for m in runner.inputs] == [i.name for i in graph.input]
            assert [m.name for m in runner.outputs] == [o.name for o in graph.output]
        dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
        assert static_shape(runner.inputs[0].shape) == tuple(dims), runner.inputs[0]  # the contract's NCHW, whatever runs inside
        assert np.dtype(runner.inputs[0].dtype) == np.float32
        out = runner.infer({runner.inputs[0].name: tiny.feed["images"]})
        assert list(out) == [m.name for m in runner.outputs] and (not names or list(out) == ["logits"])
        (value,) = out.values()
        got, want = np.asarray(value, np.float64).ravel(), tiny.expected["logits"].astype(np.float64).ravel()
        assert value.shape == tiny.expected["logits"].shape
        cosine = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
        assert cosine > COSINE[precision], cosine
        if precision == "fp32":
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    finally:
        runner.close()
    runner.close()  # closing twice is harmless


def check_tensorrt_not_built(built: Built, precision: str) -> None:
    """No GPU here: a clear reason, and the ONNX, build plan and trtexec command a device builds from."""
    from edgekit.backends.tensorrt.qdq import lint_qdq_for_tensorrt

    assert "TensorRT" in built.not_built and "trtexec" in built.not_built
    assert built.path is not None and built.path.suffix == ".onnx" and built.path.is_file()
    assert any(f.name == f"build_{precision}.json" for f in built.files)
    assert "trtexec" in built.settings["trtexec"] and built.settings["onnx_sha256"]
    if precision == "int8":
        model = onnx.load(built.path)
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
        assert built.settings["lint"] == {"issues": [], "passed": True}
        assert lint_qdq_for_tensorrt(model) == []


def test_litert_nchw_torch_source(tiny, tmp_path):
    """TorchSource.channels_last says which inputs the module takes NHWC; one taking NCHW must run as converted."""
    from dataclasses import replace

    from contracts.models import torch_source

    backend = registry.backend("tflite")
    if backend.available() is not None:
        pytest.skip(backend.available())
    graph = replace(tiny.graph, torch=torch_source(tiny.module, channels_last=False))
    run = replace(tiny.job.run, stage=tmp_path)
    built = backend.build(graph, Target.parse("tflite:fp32"), run)
    assert built.built, built.not_built
    check_runner(built.make_runner(), "fp32", tiny)
