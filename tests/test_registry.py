"""The registry: built-in families and backends by name, and a third-party backend added by a real entry point
(the worked example of the README, installed as a distribution on sys.path), with no change to edgekit."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekit import registry
from edgekit.errors import EdgekitError

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> tuple[str, str]:
    text = README.read_text(encoding="utf-8")
    code = re.search(r"```python\n# edgekit_onnxref/__init__.py\n(.*?)```", text, re.S).group(1)
    toml = re.search(r'```toml\n# edgekit-onnxref/pyproject.toml\n(.*?)```', text, re.S).group(1)
    return code, toml


@pytest.fixture
def onnxref(tmp_path, monkeypatch):
    """The README's example backend as an installed distribution: a package plus dist-info with its entry point."""
    code, toml = _readme_example()
    (tmp_path / "edgekit_onnxref").mkdir()
    (tmp_path / "edgekit_onnxref" / "__init__.py").write_text(code)
    dist = tmp_path / "edgekit_onnxref-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: edgekit-onnxref\nVersion: 0.1\n")
    group = re.search(r'\[project\.entry-points\."(.+?)"\]', toml).group(1)
    line = next(x for x in toml.splitlines() if "=" in x and not x.startswith("["))
    (dist / "entry_points.txt").write_text(f"[{group}]\n{line.replace(chr(34), '')}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    yield registry.backend("onnxref")
    sys.modules.pop("edgekit_onnxref", None)
    registry.refresh()


def test_builtin_names():
    assert registry.backend_names()[:4] == ["onnxruntime", "openvino", "tflite", "tensorrt"]
    assert {"yolo", "clip", "vlm", "onnx"} <= set(registry.family_names())
    assert registry.backend_for_suffix(".XML").name == "openvino"
    with pytest.raises(EdgekitError, match="unknown backend 'nope'"):
        registry.backend("nope")


def test_entry_point_backend_is_a_target_and_builds(onnxref, tmp_path):
    from edgekit.backends.base import Graph, Run
    from edgekit.targets import Target

    assert "onnxref" in registry.backend_names()
    target = Target.parse("onnxref:fp32")
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]),
        opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "model_fp32.onnx")
    built = onnxref.build(Graph("model", tmp_path / "model_fp32.onnx"), target, Run(None, tmp_path, lambda label, n: iter(range(n))))
    with built.make_runner() as runner:
        out = runner.infer({"x": np.array([[-1, 2, -3, 4]], np.float32)})
    assert out["y"].tolist() == [[0, 2, 0, 4]]


def test_entry_point_clashing_with_builtin_is_refused(onnxref, tmp_path):
    dist = next(tmp_path.glob("*.dist-info"))
    (dist / "entry_points.txt").write_text("[edgekit.backends]\nopenvino = edgekit_onnxref:ReferenceBackend\n")
    registry.refresh()
    with pytest.raises(EdgekitError, match="clashes with edgekit's own 'openvino'"):
        registry.backend_names()


SIMENGINE = '''
from edgekit.backends.base import Backend, Built
from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner
from edgekit.backends.tensorrt.simulate import INT8_HOW, simulated_runner


class SimEngineBackend(Backend):
    """An engine (ONNX Runtime's fused int8 kernels) that also has a CPU simulation (the Q/DQ graph as written),
    as a TensorRT target has where TensorRT runs."""

    name, precisions, suffixes = "simengine", ("int8",), ()

    def build(self, graph, target, run):
        path = graph.quantized["int8"].path
        return Built(path, "int8", lambda: OnnxRuntimeRunner(path, threads=2), [path],
                     simulate=lambda: simulated_runner(path, 2), simulated_how=INT8_HOW)

    def runner(self, path, threads=None, **options):
        return OnnxRuntimeRunner(path, threads=threads)
'''


def test_engine_and_its_simulation_are_both_reported(tmp_path, monkeypatch):
    """Where an engine is built and a simulation exists (TensorRT with TensorRT installed), the report carries the
    engine's measured metrics and latency and the simulation's metrics beside them, and report.md shows the gap."""
    import yaml
    from conftest import COCO
    from contracts.models import small_cnn_onnx

    from edgekit.job import run_recipe
    from edgekit.recipe import load_recipe

    (tmp_path / "edgekit_simengine.py").write_text(SIMENGINE)
    dist = tmp_path / "edgekit_simengine-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: edgekit-simengine\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[edgekit.backends]\nsimengine = edgekit_simengine:SimEngineBackend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    try:
        model = small_cnn_onnx(tmp_path / "cnn.onnx")
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({
            "name": "cnn", "model": {"family": "onnx", "weights": str(model)},
            "quantization": {"calibration": {"images": str(COCO / "calib_images"), "count": 8, "warn_below": 8}},
            "onnx": {"scale": "1/255", "max_images": 8}, "targets": ["onnxruntime:fp32", "simengine:int8"],
            "benchmark": {"warmup": 1, "runs": 3, "threads": 2}, "budgets": {"output_cosine": {"max_drop": 0.02}},
        }))
        report = run_recipe(load_recipe(recipe), recipe, tmp_path / "out")
    finally:
        sys.modules.pop("edgekit_simengine", None)
        registry.refresh()
    v = report.variant("simengine:int8")
    assert v.status == "measured" and v.latency_ms is not None and v.simulated_how.startswith("accuracy simulated")
    assert set(v.simulated_metrics) == set(v.metrics) and 0.98 < v.simulated_metrics["output_cosine"] <= 1.0
    assert report.variant("onnxruntime:fp32").simulated_metrics is None
    gap = f"output_cosine {v.metrics['output_cosine']:.4f} vs {v.simulated_metrics['output_cosine']:.4f}"
    assert any(n == f"engine vs its CPU simulation: {gap}" for n in v.notes), v.notes
    assert f"engine vs CPU simulation: {gap}" in (tmp_path / "out" / "report.md").read_text()
