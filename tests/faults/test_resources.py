"""Hostile sizes and missing files fail in about a second with one line, before anything heavy is allocated:
architecture tables and model configs with absurd sizes, input sizes whose run cannot fit in memory, missing paths,
unknown names, and prompts beyond the model's context."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import CLIP_BPE, REPO, TINYCLIP_CONFIG, WEIGHTS_ST, edgekit

from edgekit.errors import EdgekitError
from faults.tiny import assert_one_line_error, tiny_recipe

GIB = 1 << 30


def _recipe(tmp_path: Path, **changes):
    from edgekit.recipe import load_recipe

    path = tiny_recipe(tmp_path, **changes)
    return load_recipe(path), path


# --- YOLO architecture tables ---------------------------------------------------------------------------------------


def _yolov5n_table() -> dict:
    from safetensors import safe_open

    with safe_open(str(WEIGHTS_ST), framework="pt") as handle:
        return json.loads(handle.metadata()["yaml"])


def _with_table(tmp_path: Path, arch: dict) -> Path:
    """The real YOLOv5n weights with a replaced architecture table."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(WEIGHTS_ST), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = dict(handle.metadata())
    metadata["yaml"] = json.dumps(arch)
    path = tmp_path / "hostile.safetensors"
    save_file(tensors, str(path), metadata)
    return path


@pytest.mark.parametrize("key, value, needle", [
    ("width_multiple", 4096, "width_multiple"),
    ("depth_multiple", 1e6, "depth_multiple"),
    ("nc", 10**9, "'nc'"),
    ("nc", -3, "'nc'"),
    ("width_multiple", float("nan"), "width_multiple"),
    ("depth_multiple", "big", "depth_multiple"),
])
def test_absurd_yolo_table_is_refused_before_building(tmp_path, key, value, needle):
    from edgekit.models.yolo.checkpoint import load_checkpoint

    arch = _yolov5n_table()
    arch[key] = value
    path = _with_table(tmp_path, arch)
    start = time.perf_counter()
    with pytest.raises(EdgekitError, match=needle) as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value) and time.perf_counter() - start < 5


@pytest.mark.parametrize("layer, needle", [
    ([-1, 1, "Conv", [-64, 3, 2]], "channels"),
    ([-1, 10**6, "C3", [128]], "repeats"),
    ([-1, 1, "Conv", [16384 * 4, 3, 2]], "channels"),
    ([99, 1, "Conv", [64, 3, 2]], "earlier layer"),
    ("Conv", r"not \[from, repeats, module, args\]"),
])
def test_absurd_yolo_layer_is_refused(tmp_path, layer, needle):
    from edgekit.models.yolo.checkpoint import check_architecture

    arch = _yolov5n_table()
    arch["backbone"][1] = layer
    with pytest.raises(EdgekitError, match=needle):
        check_architecture(arch, "hostile.pt")


def test_yolo_table_within_bounds_but_too_many_parameters(tmp_path):
    """Each key within bounds, together 8x wider and 8x deeper: counted on the meta device, refused before allocating."""
    from edgekit.models.yolo.build import build_model

    arch = _yolov5n_table()
    arch.update(width_multiple=8.0, depth_multiple=8.0)
    start = time.perf_counter()
    with pytest.raises(EdgekitError, match="parameters"):
        build_model(arch, None, "wide.safetensors")
    assert time.perf_counter() - start < 10


def test_absurd_yolo_table_through_the_cli(tmp_path):
    arch = _yolov5n_table()
    arch["width_multiple"] = 4096
    weights = _with_table(tmp_path, arch)
    recipe = tiny_recipe(tmp_path, model__weights=str(weights))
    assert_one_line_error(edgekit("export", recipe, "--out", tmp_path / "run"), "hostile.safetensors", "width_multiple")


# --- VLM and CLIP configs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [("hidden_size", 10**9), ("num_hidden_layers", 10**6)])
def test_absurd_vlm_config_is_refused_before_allocating(tmp_path, key, value):
    pytest.importorskip("transformers")
    from edgekit.models.vlm.checkpoint import load_vlm

    folder = Path(shutil.copytree(REPO / "recipes" / "models" / "smolvlm-tiny", tmp_path / "vlm"))
    config = json.loads((folder / "config.json").read_text())
    config["text_config"][key] = value
    (folder / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(EdgekitError, match=key):
        load_vlm(None, folder, CLIP_BPE)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("tower, key, value", [("vision_cfg", "width", 2**20), ("text_cfg", "layers", 10**6)])
def test_absurd_clip_config_is_refused_before_allocating(tmp_path, tower, key, value):
    pytest.importorskip("transformers")
    from edgekit.models.clip.checkpoint import load_clip

    config = json.loads(TINYCLIP_CONFIG.read_text())
    config[tower][key] = value
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(EdgekitError, match="huge.json"):
        load_clip(None, path)
    assert time.perf_counter() - start < 10


# --- memory estimate ----------------------------------------------------------------------------------------------


def test_memory_estimate_follows_the_measurements(tmp_path):
    from edgekit.families.yolo import Yolo

    measured_mib = {128: 471, 320: 550, 640: 895, 960: 1716}  # peak RSS of the tiny recipe (see Yolo.estimate_memory_bytes)
    for size, mib in measured_mib.items():
        recipe, _ = _recipe(tmp_path, model__input_size=size)
        estimate = Yolo.estimate_memory_bytes(recipe) / 2**20
        assert mib <= estimate <= 1.3 * mib, (size, mib, estimate)


def test_input_size_beyond_memory_is_refused(tmp_path, monkeypatch):
    from edgekit import preflight as pf

    monkeypatch.setattr(pf, "available_memory_bytes", lambda: 16 * GIB)
    recipe, path = _recipe(tmp_path, model__input_size=4096)
    with pytest.raises(EdgekitError) as exc:
        pf.preflight(recipe, path)
    message = str(exc.value)
    for needle in ("tiny.yaml", "27.6 GiB", "16.0 GiB", "input_size 4096", "--force"):
        assert needle in message, (needle, message)
    pf.preflight(recipe, path, force=True)  # --force: the memory check only is skipped
    small, _ = _recipe(tmp_path, name="small.yaml")
    pf.preflight(small, path)


def test_memory_available_is_read():
    from edgekit.preflight import available_memory_bytes

    assert available_memory_bytes() > 64 * 2**20


# --- paths and names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, key", [
    ({"evaluation__dataset__annotations": "/nope/instances.json"}, "evaluation.dataset.annotations"),
    ({"evaluation__dataset__images": "/nope/images"}, "evaluation.dataset.images"),
    ({"quantization__calibration__images": "/nope/calib"}, "quantization.calibration.images"),
    ({"model__weights": "/nope/yolov5n.safetensors"}, "model.weights"),
])
def test_missing_path_fails_in_preflight(tmp_path, change, key):
    from edgekit.preflight import preflight

    recipe, path = _recipe(tmp_path, **change)
    start = time.perf_counter()
    with pytest.raises(EdgekitError, match=key.replace(".", r"\.")) as exc:
        preflight(recipe, path)
    assert "/nope/" in str(exc.value) and time.perf_counter() - start < 2


def test_paths_are_found_in_family_sections(tmp_path):
    """The walk is generic: the clip section's nested paths (and a list of paths) are found by type, not by name."""
    from edgekit.preflight import recipe_paths
    from edgekit.recipe import load_recipe

    keys = {k for k, _ in recipe_paths(load_recipe(REPO / "recipes" / "clip.yaml"))}
    assert {"model.config", "clip.zero_shot.labels", "clip.retrieval.captions", "clip.retrieval.images.0"} <= keys


def test_unknown_names_fail_early(tmp_path):
    from edgekit.preflight import preflight

    recipe, path = _recipe(tmp_path, budgets={"mAP50_95": {"max_drop": 0.01}})
    with pytest.raises(EdgekitError, match="mAP50-95"):
        preflight(recipe, path)
    recipe, path = _recipe(tmp_path, quantization__keep_float={"op_types": ["Conv", "Concatt"]})
    with pytest.raises(EdgekitError, match="Concat"):
        preflight(recipe, path)


@pytest.mark.parametrize("changes, needle", [
    ({"export__passes": ["constant_folding", "fuse_conv_bnn"]}, "fuse_conv_bnn"),
    ({"targets": ["onnxruntime:fp32", "onnxruntim:int8"]}, "onnxruntim"),
    ({"targets": ["onnxruntime:fp32", "onnxruntime:int9"]}, "int9"),
])
def test_unknown_names_are_refused_at_load(tmp_path, changes, needle):
    from edgekit.recipe import load_recipe

    with pytest.raises(EdgekitError, match=needle):
        load_recipe(tiny_recipe(tmp_path, **changes))


# --- through the CLI ---------------------------------------------------------------------------------------------


def test_cli_missing_annotations_fail_fast(tmp_path):
    recipe = tiny_recipe(tmp_path, evaluation__dataset__annotations=str(tmp_path / "missing.json"))
    start = time.perf_counter()
    result = edgekit("export", recipe, "--out", tmp_path / "run")
    assert_one_line_error(result, "evaluation.dataset.annotations", "missing.json")
    assert time.perf_counter() - start < 30 and not (tmp_path / "run").exists()


def test_cli_input_size_beyond_memory(tmp_path):
    recipe = tiny_recipe(tmp_path, model__input_size=32768)  # ~1.7 TiB estimated: refused on any machine
    result = edgekit("export", recipe, "--out", tmp_path / "run")
    assert_one_line_error(result, "tiny.yaml", "GiB", "--force")
    assert "--force" in edgekit("export", "--help").stdout


# --- generation context -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vlm_run(vlm_export, tmp_path_factory) -> Path:
    """A minimal VLM run folder (processor, vlm.json, FP32 graphs) from the session's exported SmolVLM-tiny graphs."""
    family, model, graphs = vlm_export["idefics3"]
    run = tmp_path_factory.mktemp("vlm-run")
    family.save(run)
    meta = json.loads((run / "vlm.json").read_text())
    meta["targets"] = {"onnxruntime:fp32": {}}
    for name, path in graphs.items():
        shutil.copy(path, run / Path(path).name)
        meta["targets"]["onnxruntime:fp32"][name] = Path(path).name
    meta.setdefault("context", model.config.text_config.max_position_embeddings)
    (run / "vlm.json").write_text(json.dumps(meta))
    return run


def test_prompt_beyond_context_is_refused(vlm_run):
    start = time.perf_counter()
    result = edgekit("generate", vlm_run, "--prompt", "word " * 20_000, "--max-new-tokens", "8")
    assert_one_line_error(result, "context of 2,048 tokens", "--max-new-tokens")
    assert time.perf_counter() - start < 60


def test_max_new_tokens_counts_against_context(vlm_run):
    result = edgekit("generate", vlm_run, "--prompt", "Say something.", "--max-new-tokens", "5000")
    assert_one_line_error(result, "2,048", "max-new-tokens")
    ok = edgekit("generate", vlm_run, "--prompt", "Say something.", "--max-new-tokens", "3")
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_context_from_the_report_when_vlm_json_has_none(vlm_run, tmp_path):
    from edgekit.models.vlm.runtime import context_length

    run = Path(shutil.copytree(vlm_run, tmp_path / "run"))
    meta = json.loads((run / "vlm.json").read_text())
    meta.pop("context")
    (run / "vlm.json").write_text(json.dumps(meta))
    assert context_length(run) is None
    report = {"recipe": {"content": {"model": {"config": str(REPO / "recipes" / "models" / "smolvlm-tiny")}}}}
    (run / "report.json").write_text(json.dumps(report))
    assert context_length(run) == 2048

