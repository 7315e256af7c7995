"""Recipe validation: strict keys, clear errors naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ASSETS, REPO

from edgekit.errors import EdgekitError
from edgekit.recipe import load_recipe


def _write(tmp_path, data) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def base() -> dict:
    return yaml.safe_load((REPO / "recipes" / "yolov5n.yaml").read_text())


def test_shipped_recipe_loads_and_expands_assets():
    recipe = load_recipe(REPO / "recipes" / "yolov5n.yaml")
    assert recipe.model.weights == str(ASSETS / "yolo" / "yolov5n.safetensors")
    assert [t.name for t in recipe.targets] == ["onnxruntime:fp32", "onnxruntime:int8", "openvino:int8", "tflite:int8"]
    assert recipe.budgets["mAP50-95"].max_drop == 0.005
    edge = load_recipe(REPO / "recipes" / "yolov5n_edge.yaml")
    assert {t.backend for t in edge.targets} == {"onnxruntime", "openvino", "tflite", "tensorrt"}


def test_unknown_key_names_key_and_file(tmp_path, base):
    base["quantization"]["calibraton"] = base["quantization"].pop("calibration")
    path = _write(tmp_path, base)
    with pytest.raises(EdgekitError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message and "quantization.calibraton" in message and "\n" not in message


def test_bad_values_and_missing_keys(tmp_path, base):
    bad = dict(base, quantization=dict(base["quantization"], method="kl"))
    with pytest.raises(EdgekitError, match="quantization.method"):
        load_recipe(_write(tmp_path, bad))
    missing = {k: v for k, v in base.items() if k != "model"}
    with pytest.raises(EdgekitError, match="missing recipe key 'model'"):
        load_recipe(_write(tmp_path, missing))
    both = dict(base, budgets={"mAP50": {"max_drop": 0.1, "max_relative_drop": 0.1}})
    with pytest.raises(EdgekitError, match="exactly one of max_drop"):
        load_recipe(_write(tmp_path, both))
    batched = dict(base, model=dict(base["model"], batch=4))
    with pytest.raises(EdgekitError, match="needs export.dynamic_batch: true"):
        load_recipe(_write(tmp_path, batched))
    no_quant = {k: v for k, v in base.items() if k != "quantization"}
    with pytest.raises(EdgekitError, match="int8 target needs a `quantization:` section"):
        load_recipe(_write(tmp_path, no_quant))


def test_quantization_enabled_false_refuses_quantized_targets(tmp_path, base):
    """``quantization.enabled: false`` turns quantization off: quantized targets are refused by name, float-only
    recipes load without a quantization section."""
    off = dict(base, quantization=dict(base["quantization"], enabled=False))
    with pytest.raises(EdgekitError, match="quantization.enabled is false but onnxruntime:int8, openvino:int8, tflite:int8 need quantization"):
        load_recipe(_write(tmp_path, off))
    recipe = load_recipe(_write(tmp_path, dict(off, targets=["onnxruntime:fp32", "openvino:fp16"])))
    assert recipe.quantization is None and [t.name for t in recipe.targets] == ["onnxruntime:fp32", "openvino:fp16"]


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(EdgekitError, match="broken.yaml: invalid YAML at line"):
        load_recipe(path)


def _vlm_recipe(tmp_path, **vlm):
    import yaml

    data = yaml.safe_load((REPO / "recipes" / "smolvlm.yaml").read_text())
    data["vlm"].update(vlm.pop("vlm", {}))
    data.update(vlm)
    path = tmp_path / "vlm.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_vlm_recipes_load_with_their_targets(tmp_path):
    for name in ("smolvlm", "llava"):
        recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
        assert recipe.model.family == "vlm" and [t.name for t in recipe.targets] == ["onnxruntime:fp32", "onnxruntime:int8", "onnxruntime:int4", "onnxruntime:dynamic"]
        assert recipe.budgets["logit_kl"].max_value is not None and "token_agreement" in recipe.budgets
        assert Path(recipe.vlm.images).is_dir()  # ${EDGEKIT_ASSETS} expanded in a default-like value


def test_vlm_recipe_errors_name_the_problem(tmp_path):
    with pytest.raises(EdgekitError, match=r"vlm targets run on onnxruntime, tensorrt only \(got openvino:int8\)"):
        load_recipe(_vlm_recipe(tmp_path, targets=["onnxruntime:fp32", "openvino:int8"]))
    with pytest.raises(EdgekitError, match="unknown recipe key 'vlm.lm_heads'"):
        load_recipe(_vlm_recipe(tmp_path, vlm={"lm_heads": "float"}))
    yolo = yaml.safe_load((REPO / "recipes" / "yolov5n.yaml").read_text())
    yolo["targets"] = ["onnxruntime:fp32", "onnxruntime:int4"]
    (tmp_path / "y.yaml").write_text(yaml.safe_dump(yolo))
    with pytest.raises(EdgekitError, match="int4/dynamic targets are for vlm decoders"):
        load_recipe(tmp_path / "y.yaml")
