"""Calibration: an image folder read through the model's own preprocessing, streamed, with a content-keyed cache."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgekit.artifacts import sha256_file, write_json_atomic
from edgekit.errors import EdgekitError
from edgekit.quantization.observers import Histogram, MinMax, final_range
from edgekit.quantization.spec import Range

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class SmallCalibrationSetWarning(UserWarning):
    """Fewer calibration images than the recipe's ``warn_below``: ranges may not represent real inputs."""


def calibration_images(folder: str | Path, count: int, warn_below: int = 32) -> list[Path]:
    """The first ``count`` images of ``folder`` (sorted by name); every file must be an image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgekitError("calibration folder not found", folder, "set quantization.calibration.images to a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise EdgekitError(f"calibration folder holds a non-image file ({others[0].name})", others[0], "remove non-image files from the folder")
    if not files:
        raise EdgekitError("calibration folder is empty", folder, "put representative images (e.g. 100-500) in it")
    chosen = files[:count]
    if len(chosen) < warn_below:
        warnings.warn(
            f"only {len(chosen)} calibration images in {folder} (fewer than {warn_below}): INT8 ranges may not "
            "represent real inputs; use at least a few hundred representative images",
            SmallCalibrationSetWarning,
            stacklevel=2,
        )
    return chosen


def sample_digest(sample: Path | str) -> str:
    """sha256 of one calibration sample: an image file's bytes, or a text's UTF-8 bytes."""
    return sha256_file(sample) if isinstance(sample, Path) else hashlib.sha256(str(sample).encode()).hexdigest()


def cache_key(model: onnx.ModelProto, images: Sequence[Path | str], tensors: list[str], settings: dict) -> str:
    """Hash of the model bytes, every sample's bytes (image files or texts), the observed tensors and the settings."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(model.SerializeToString(deterministic=True)).digest())
    for sample in images:
        digest.update(sample_digest(sample).encode())
    digest.update(json.dumps({"tensors": sorted(tensors), **settings}, sort_keys=True).encode())
    return digest.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit")) / "calibration"


@dataclass
class CalibrationResult:
    ranges: dict[str, Range]
    key: str
    images: int
    from_cache: bool


def observe_model(model: onnx.ModelProto, tensors: list[str]) -> bytes:
    """The model with every observed tensor exposed as an extra output."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    present = {o.name for o in aug.graph.output}
    for name in tensors:
        if name not in present:
            aug.graph.output.append(onnx.ValueInfoProto(name=name))
    return aug.SerializeToString()


def collect_ranges(
    model: onnx.ModelProto,
    tensors: list[str],
    images: Sequence[Path | str],
    preprocess: Callable[[Path | str], dict[str, np.ndarray]],
    method: str = "percentile",
    percentile: float = 99.99,
    threads: int = 2,
    progress: Callable[[str, int], Iterator[int]] | None = None,
    use_cache: bool = True,
) -> CalibrationResult:
    """Observe ``tensors`` over ``images`` (one sample in memory at a time) and return each tensor's range.

    Samples are image paths or texts (caption calibration of a text encoder); ``preprocess`` turns one into a feed.

    MinMax takes one pass; percentile and entropy take a second pass that fills fixed-range histograms.
    """
    import onnxruntime as ort

    settings = {"method": method, "percentile": percentile if method == "percentile" else None, "version": 1}
    key = cache_key(model, images, tensors, settings)
    cached = cache_dir() / f"{key}.json"
    if use_cache and cached.is_file():
        data = json.loads(cached.read_text())
        return CalibrationResult({k: Range(*v) for k, v in data["ranges"].items()}, key, len(images), True)

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(observe_model(model, tensors), options, providers=["CPUExecutionProvider"])
    wanted = list(tensors)
    steps = progress or (lambda _label, n: iter(range(n)))

    def batches(label: str) -> Iterator[dict[str, np.ndarray]]:
        for i in steps(label, len(images)):
            feed = preprocess(images[i])
            yield dict(zip(wanted, session.run(wanted, feed)))

    minmax = {t: MinMax() for t in wanted}
    for values in batches("calibration: ranges"):
        for name, value in values.items():
            minmax[name].update(value)
    hists: dict[str, Histogram] = {}
    if method != "minmax":
        hists = {t: Histogram(minmax[t].low, minmax[t].high) for t in wanted}
        for values in batches(f"calibration: {method} histograms"):
            for name, value in values.items():
                hists[name].update(value)
    ranges = {t: final_range(method, minmax[t], hists.get(t), percentile) for t in wanted}
    if use_cache:
        write_json_atomic(cached, {"ranges": {k: [v.low, v.high] for k, v in ranges.items()}, "settings": settings, "images": len(images)})
    return CalibrationResult(ranges, key, len(images), False)
