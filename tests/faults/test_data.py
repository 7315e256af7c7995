"""Hostile evaluation data and images: real bad files, each refused in one line (exit 2, the file named, no
traceback, nothing at --out), and a bad annotation file before the export starts (preflight)."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import ANNOTATIONS, COCO, REPO, edgekit
from PIL import Image

from edgekit.errors import EdgekitError
from edgekit.imaging import ALPHA_BACKGROUND, open_rgb, to_rgb
from faults.tiny import assert_one_line_error, tiny_recipe

GT = json.loads(ANNOTATIONS.read_text())
FIRST_IMAGE = COCO / "images" / GT["images"][0]["file_name"]


def export_staged(recipe: Path, out: Path) -> subprocess.CompletedProcess:
    """``edgekit export`` with its stage lines on (EDGEKIT_PROGRESS=1 logs "load", "export ..." to stderr)."""
    env = dict(os.environ, EDGEKIT_PROGRESS="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "edgekit.cli", "export", str(recipe), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def assert_refused_early(result, out: Path, *needles: str) -> None:
    """One error line naming ``needles``, nothing at ``out``, and no stage ran (not even "load"): preflight."""
    assert_one_line_error(result, *needles)
    assert not out.exists()
    stages = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("error:")]
    assert stages == [], stages


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def subset(count: int) -> dict:
    """The real annotations of the first ``count`` images."""
    images = GT["images"][:count]
    ids = {im["id"] for im in images}
    return dict(GT, images=images, annotations=[a for a in GT["annotations"] if a["image_id"] in ids])


def png(path: Path, width: int, height: int, bit_depth: int, color_type: int, rows) -> Path:
    """A valid PNG written chunk by chunk (``rows``: each row's raw bytes, without the filter byte), streamed
    through zlib so a huge but blank image costs a moment."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(b"\x00" + row) for row in rows) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def blank_png(path: Path, side: int) -> Path:
    """A ``side`` x ``side`` all-black 1-bit PNG (a few kB on disk)."""
    row = bytes((side + 7) // 8)
    return png(path, side, side, 1, 0, (row for _ in range(side)))


# --- annotation files: refused in preflight, before the export ------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "change", "needle"),
    [
        ("no-annotations", lambda gt: dict(gt, annotations=[]), "no ground truth"),
        ("unknown-categories", lambda gt: dict(gt, annotations=[dict(a, category_id=9000 + a["category_id"]) for a in gt["annotations"]]), "no ground truth"),
        ("no-bbox", lambda gt: dict(gt, annotations=[{k: v for k, v in a.items() if k != "bbox"} for a in gt["annotations"]]), "no 'bbox'"),
        ("empty-categories", lambda gt: dict(gt, categories=[]), "no categories"),
    ],
)
def test_bad_annotation_file_is_refused_before_export(tmp_path, case, change, needle):
    annotations = write_json(tmp_path / f"{case}.json", change(subset(8)))
    recipe = tiny_recipe(tmp_path, evaluation__dataset={"images": str(COCO / "images"), "annotations": str(annotations)})
    start = time.perf_counter()
    result = export_staged(recipe, tmp_path / "run")
    assert_refused_early(result, tmp_path / "run", str(annotations), needle)
    assert time.perf_counter() - start < 20  # CLI start-up only (an export of the tiny recipe takes longer)


@pytest.mark.parametrize(
    ("case", "change", "needle"),
    [
        ("bad-bbox", lambda gt: dict(gt, annotations=[dict(a, bbox=[1, 2, "3"]) for a in gt["annotations"]]), "not 4 finite numbers"),
        ("nan-bbox", lambda gt: dict(gt, annotations=[dict(a, bbox=[1, 2, float("nan"), 4]) for a in gt["annotations"]]), "not 4 finite numbers"),
        ("no-categories-key", lambda gt: {k: v for k, v in gt.items() if k != "categories"}, "'categories'"),
        ("some-unknown-categories", lambda gt: dict(gt, annotations=[dict(a, category_id=9999) if i == 0 else a for i, a in enumerate(gt["annotations"])]),
         "1 annotations use category ids not in 'categories'"),
        ("foreign-image-ids", lambda gt: dict(gt, annotations=[dict(a, image_id=-5) if i == 0 else a for i, a in enumerate(gt["annotations"])]),
         "refer to image ids not in 'images'"),
    ],
)
def test_more_bad_annotation_files_are_one_line_errors(tmp_path, case, change, needle):
    """The same parser the CLI cases above go through (in process: the CLI path is shown by those)."""
    from edgekit.evaluators.coco import coco_images

    annotations = write_json(tmp_path / f"{case}.json", change(subset(8)))
    with pytest.raises(EdgekitError) as info:
        coco_images(annotations, COCO / "images")
    assert str(annotations) in str(info.value) and needle in str(info.value) and "\n" not in str(info.value)


def test_ground_truth_missing_on_the_evaluated_images_is_refused(tmp_path):
    """Annotations exist, but none on the first max_images images: every score would be 0 and the gate would hold."""
    data = subset(8)
    empty_ids = {im["id"] for im in data["images"][:2]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in empty_ids]
    annotations = write_json(tmp_path / "sparse.json", data)
    recipe = tiny_recipe(tmp_path, evaluation__dataset={"images": str(COCO / "images"), "annotations": str(annotations)}, evaluation__max_images=2)
    assert_refused_early(export_staged(recipe, tmp_path / "run"), tmp_path / "run", str(annotations), "no ground truth box on the 2 evaluated images")


# --- images missing from the folder ---------------------------------------------------------------------------------


def test_missing_images_are_refused_unless_allowed(tmp_path):
    annotations = write_json(tmp_path / "ten.json", subset(10))
    folder = tmp_path / "images"
    folder.mkdir()
    for im in GT["images"][:8]:  # 2 of the 10 annotated images are missing
        shutil.copy(COCO / "images" / im["file_name"], folder)
    dataset = {"images": str(folder), "annotations": str(annotations)}
    refused = tiny_recipe(tmp_path, "refused.yaml", evaluation__dataset=dataset, evaluation__max_images=None)
    assert_refused_early(export_staged(refused, tmp_path / "refused"), tmp_path / "refused", str(folder), "2 of 10 images", "allow_missing_images")

    allowed = tiny_recipe(tmp_path, "allowed.yaml", evaluation__dataset=dict(dataset, allow_missing_images=True), evaluation__max_images=None)
    result = edgekit("export", allowed, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    for variant in report["variants"]:
        assert variant["metrics"]["images_evaluated"] == 8
        assert f"evaluated 8 of 10 annotated images (2 missing from {folder})" in variant["notes"]
    assert "evaluated 8 of 10 annotated images" in (tmp_path / "run" / "report.md").read_text()


def test_eval_refuses_missing_images_before_loading_the_model(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(FIRST_IMAGE, folder)
    result = edgekit("eval", tmp_path / "never-opened.onnx", "--images", folder, "--annotations", ANNOTATIONS)
    assert_one_line_error(result, str(folder), "157 of 158 images", "allow_missing_images")


# --- hostile images -------------------------------------------------------------------------------------------------


def test_16bit_png_reads_like_its_8bit_source(tmp_path):
    """A real COCO image stored at 16 bits (v * 257), grey and RGB, decodes to its 8-bit pixels (not 99.6% white)."""
    rgb = np.asarray(Image.open(FIRST_IMAGE).convert("RGB"))
    grey = np.asarray(Image.open(FIRST_IMAGE).convert("L"))
    wide = grey.astype(np.uint16) * 257
    Image.fromarray(wide).save(tmp_path / "grey16.png")  # Pillow writes mode I;16 as a 16-bit grey PNG
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    h, w, _ = rgb.shape
    rows = ((rgb[y].astype(">u2") * 257).tobytes() for y in range(h))
    png(tmp_path / "rgb16.png", w, h, 16, 2, rows)

    decoded = np.asarray(open_rgb(tmp_path / "grey16.png")).astype(int)
    assert decoded.shape == (h, w, 3) and np.abs(decoded - grey[..., None]).max() <= 1
    assert np.abs(np.asarray(open_rgb(tmp_path / "rgb16.png")).astype(int) - rgb).max() <= 1
    for mode in ("I;16B", "I"):  # the other 16-bit layouts Pillow gives (big-endian; 32-bit int from TIFF)
        image = Image.fromarray(wide.astype(">u2")) if mode == "I;16B" else Image.fromarray(wide.astype(np.int32))
        assert image.mode == mode
        assert np.abs(np.asarray(to_rgb(image)).astype(int) - grey[..., None]).max() <= 1


def test_palette_alpha_and_cmyk_images_go_to_rgb(tmp_path):
    rgb = Image.open(FIRST_IMAGE).convert("RGB")
    pixels = np.asarray(rgb).astype(int)
    cmyk = tmp_path / "cmyk.jpg"
    rgb.convert("CMYK").save(cmyk, quality=95)
    assert np.abs(np.asarray(open_rgb(cmyk)).astype(int) - pixels).mean() < 8
    palette = tmp_path / "palette.png"
    rgb.quantize(256).save(palette)
    assert np.abs(np.asarray(open_rgb(palette)).astype(int) - pixels).mean() < 8
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: the colours under alpha 0 must not leak through
    rgba.save(tmp_path / "clear.png")
    assert (np.asarray(open_rgb(tmp_path / "clear.png")) == ALPHA_BACKGROUND).all()
    rgb.convert("LA").save(tmp_path / "la.png")  # opaque grey + alpha: the grey image
    assert np.abs(np.asarray(open_rgb(tmp_path / "la.png")).astype(int) - np.asarray(rgb.convert("L"))[..., None]).max() <= 1


def test_decompression_bomb_in_calibration_is_refused_before_export(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    shutil.copy(FIRST_IMAGE, folder)
    bomb = blank_png(folder / "huge.png", 14000)
    recipe = tiny_recipe(tmp_path, quantization__calibration={"images": str(folder), "count": 8, "warn_below": 1})
    result = export_staged(recipe, tmp_path / "run")
    assert_refused_early(result, tmp_path / "run", str(bomb), "decompression-bomb limit", "resize it")
    assert Image.MAX_IMAGE_PIXELS == 89478485  # the limit is kept, not disabled


def test_images_between_one_and_two_times_the_limit_are_refused_too(tmp_path):
    """Pillow only warns between 1x and 2x its limit; edgekit refuses the whole range above 1x (one rule)."""
    from edgekit.models.vlm.family import VlmFamily

    warned = blank_png(tmp_path / "big.png", 10000)  # 100 megapixels: 1.1x the limit
    for read in (open_rgb, lambda p: VlmFamily(None, None, None, 0, [], 0).inputs(p, "Describe.")):  # the generate --image path
        with pytest.raises(EdgekitError) as info:
            read(warned)
        assert str(warned) in str(info.value) and "100 megapixels" in str(info.value) and "\n" not in str(info.value)
    assert open_rgb(blank_png(tmp_path / "ok.png", 9000)).size == (9000, 9000)  # 81 megapixels: under the limit


def test_truncated_evaluation_image_is_one_line(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for im in GT["images"][:8]:
        shutil.copy(COCO / "images" / im["file_name"], folder)
    broken = folder / GT["images"][0]["file_name"]
    broken.write_bytes(broken.read_bytes()[:3000])  # a valid header, most of the pixel data gone
    annotations = write_json(tmp_path / "eight.json", subset(8))
    recipe = tiny_recipe(tmp_path, evaluation__dataset={"images": str(folder), "annotations": str(annotations)})
    result = edgekit("export", recipe, "--out", tmp_path / "run")
    assert_one_line_error(result, str(broken), "not a readable image")
    assert not (tmp_path / "run").exists()


# --- edgekit eval on a model that is not a YOLO detector ------------------------------------------------------------


def onnx_model(path: Path, inputs: list[tuple[str, list]], output: tuple[str, list]) -> Path:
    """A tiny real ONNX model: GlobalAveragePool + Flatten + MatMul of its first input (a classifier), extra inputs unused."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    channels = inputs[0][1][1]
    classes = output[1][-1]
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((channels, classes)).astype(np.float32), "w")
    nodes = [helper.make_node("GlobalAveragePool", [inputs[0][0]], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], [output[0]])]
    graph = helper.make_graph(nodes, "classifier", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("case", "inputs", "output", "needle"),
    [
        ("classifier", [("images", [1, 3, 64, 64])], ("logits", [1, 10]), "'logits' (1, 10) is not 3-D"),
        ("grey-input", [("images", [1, 1, 64, 64])], ("logits", [1, 10]), "'images' (1, 1, 64, 64) float32 is not a float (batch, 3, H, W)"),
    ],
)
def test_eval_refuses_a_model_that_is_not_a_yolo_detector(tmp_path, case, inputs, output, needle):
    model = onnx_model(tmp_path / f"{case}.onnx", inputs, output)
    result = edgekit("eval", model, "--max-images", 2)
    assert_one_line_error(result, str(model), "not a YOLO detector", needle)


def test_model_metadata_checks_in_process():
    """More layouts through the same check (``YoloFamily.from_runner_metadata``) without a CLI start each."""
    from edgekit.models.yolo.family import YoloFamily
    from edgekit.runners.base import TensorMeta

    f32 = np.dtype(np.float32)
    image = TensorMeta("images", (1, 3, 640, 640), f32)
    cases = {
        "it has 2 inputs": ([image, TensorMeta("mask", (1, 64), f32)], [TensorMeta("output0", (1, 25200, 85), f32)]),
        "is not square": ([TensorMeta("images", (1, 3, 320, 640), f32)], [TensorMeta("output0", (1, 12600, 85), f32)]),
        "too few channels": ([image], [TensorMeta("output0", (1, 25200, 4), f32)]),
        "float (batch, 3, H, W)": ([TensorMeta("images", (1, 3, 640, 640), np.dtype(np.uint8))], [TensorMeta("output0", (1, 25200, 85), f32)]),
    }
    for needle, (inputs, outputs) in cases.items():
        with pytest.raises(EdgekitError, match=re.escape(needle)):
            YoloFamily.from_runner_metadata(inputs, outputs, source="m.onnx")
    v5 = YoloFamily.from_runner_metadata([image], [TensorMeta("output0", (1, 25200, 85), f32)])
    v8 = YoloFamily.from_runner_metadata([image], [TensorMeta("output0", (1, 84, 8400), f32)])
    lite = YoloFamily.from_runner_metadata([image], [TensorMeta("boxes", (1, 25200, 4), f32), TensorMeta("scores", (1, 25200, 81), f32)])
    dynamic = YoloFamily.from_runner_metadata([TensorMeta("images", ("batch", 3, "h", "w"), f32)], [TensorMeta("output0", ("batch", "n", 85), f32)])
    assert (v5.anchor_based, v5.num_classes, v8.anchor_based, v8.num_classes, lite.anchor_based, lite.num_classes) == (True, 80, False, 80, True, 80)
    assert (dynamic.input_size, dynamic.num_classes) == (640, 80)


def test_eval_refuses_max_images_below_one(tmp_path):
    model = onnx_model(tmp_path / "m.onnx", [("images", [1, 3, 64, 64])], ("logits", [1, 10]))
    assert_one_line_error(edgekit("eval", model, "--max-images", "0"), "--max-images must be at least 1 (got 0)")
