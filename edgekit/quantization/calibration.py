"""Calibration: an image folder read through the model's own preprocessing, streamed, with a content-keyed cache.

The cache (``$EDGEKIT_CACHE/calibration/<key>.json``) never silently changes a result: each entry carries its key and
the sha256 of its canonical content and is verified on every read (JSON, shape, key, checksum, every tensor present
with a finite ``low <= high``); an entry that does not verify is reported in one :class:`CacheWarning` line,
recomputed and replaced atomically. A cache folder that cannot be used is one warning and a run without a cache. Runs
computing the same key take turns on ``<key>.lock`` (``flock``): the second waits, then reads the first's entry.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
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


RANGE_METHODS = ("minmax", "percentile", "entropy", "mse")
CACHE_VERSION = 2  # 2: entries carry their key and a sha256 of their content (version 1 entries are misses)


class CacheWarning(UserWarning):
    """A calibration cache entry did not verify (it is recomputed), or the cache folder cannot be used (no cache)."""


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


def _canonical(ranges: dict, settings: dict, images: int) -> bytes:
    return json.dumps({"ranges": ranges, "settings": settings, "images": images}, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def cache_entry(key: str, ranges: dict[str, Range], settings: dict, images: int) -> dict:
    """The JSON payload of one cache entry: its key, content and the sha256 of the canonical content."""
    values = {name: [float(r.low), float(r.high)] for name, r in sorted(ranges.items())}
    return {"key": key, "ranges": values, "settings": settings, "images": images,
            "sha256": hashlib.sha256(_canonical(values, settings, images)).hexdigest()}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def verify_entry(data: object, key: str, tensors: Sequence[str], settings: dict, images: int) -> tuple[dict[str, Range] | None, str]:
    """The ranges of a parsed cache entry, or ``(None, why it does not verify)``."""
    if not isinstance(data, dict) or not {"key", "ranges", "settings", "images", "sha256"} <= data.keys():
        return None, "not a calibration cache entry (missing key, ranges, settings, images or sha256)"
    if data["key"] != key:
        return None, f"it holds the entry of another key ({str(data['key'])[:12]}...)"
    values, found_settings, found_images = data["ranges"], data["settings"], data["images"]
    if not isinstance(values, dict) or not all(isinstance(v, list) and len(v) == 2 and all(map(_is_number, v)) for v in values.values()):
        return None, "ranges are not [low, high] number pairs"
    if found_settings != settings or found_images != images:
        return None, "its settings or image count differ from this calibration's"
    try:
        digest = hashlib.sha256(_canonical(values, found_settings, found_images)).hexdigest()
    except (TypeError, ValueError):
        digest = None
    if digest != data["sha256"]:
        return None, "its sha256 does not match its content"
    missing = sorted(set(tensors) - values.keys())
    if missing or len(values) != len(set(tensors)):
        return None, f"its tensors differ from the calibrated ones ({len(missing)} missing)"
    bad = [n for n, (low, high) in values.items() if not (math.isfinite(low) and math.isfinite(high) and low <= high)]
    if bad:
        return None, f"tensor {bad[0]} has no finite low <= high"
    return {name: Range(float(low), float(high)) for name, (low, high) in values.items()}, ""


def read_entry(path: Path, key: str, tensors: Sequence[str], settings: dict, images: int) -> tuple[dict[str, Range] | None, str]:
    """The verified ranges of the entry at ``path``, or ``(None, "")`` for a miss, ``(None, why)`` for a bad entry."""
    try:
        text = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None, ""
    except OSError as exc:
        return None, f"cannot read it ({_os_reason(exc)})"
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"not valid JSON ({type(exc).__name__})"
    return verify_entry(data, key, tensors, settings, images)


def _os_reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno, type(exc).__name__) if exc.errno else type(exc).__name__
    return f"{name}: {exc.strerror or exc}"


def _unwritable(folder: Path, exc: OSError) -> None:
    warnings.warn(f"calibration cache {folder} is not writable ({_os_reason(exc)}): running without a cache", CacheWarning, stacklevel=3)


@contextlib.contextmanager
def _entry_lock(folder: Path, key: str) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``<key>.lock`` (an empty file, left in place so every run locks the same inode);
    yield False (after one warning) when the cache folder cannot be used."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locks, entries are still written atomically
        fcntl = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        _unwritable(folder, exc)
        yield False
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fcntl.flock(fd, fcntl.LOCK_EX)  # another run is computing this key: wait for its entry
            except OSError:
                pass  # no locks on this filesystem (ENOLCK): entries are still written atomically
        yield True
    finally:
        os.close(fd)  # releases the lock


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

    MinMax takes one pass; percentile, entropy and mse take a second pass that fills fixed-range histograms.
    """
    settings = {"method": method, "percentile": percentile if method == "percentile" else None, "version": CACHE_VERSION}
    key = cache_key(model, images, tensors, settings)
    if not use_cache:
        return CalibrationResult(_compute(model, tensors, images, preprocess, method, percentile, threads, progress), key, len(images), False)
    folder = cache_dir()
    path = folder / f"{key}.json"
    ranges, _ = read_entry(path, key, tensors, settings, len(images))
    if ranges is not None:
        return CalibrationResult(ranges, key, len(images), True)
    with _entry_lock(folder, key) as locked:
        ranges, problem = read_entry(path, key, tensors, settings, len(images))  # another run may have written it meanwhile
        if ranges is not None:
            return CalibrationResult(ranges, key, len(images), True)
        if problem:
            warnings.warn(f"calibration cache entry {path} does not verify ({problem}): recomputing it", CacheWarning, stacklevel=2)
        ranges = _compute(model, tensors, images, preprocess, method, percentile, threads, progress)
        try:
            entry = cache_entry(key, ranges, settings, len(images))
        except ValueError:  # a non-finite range is never cached (it would not verify)
            entry = None
        if locked and entry is not None:
            try:
                write_json_atomic(path, entry)
            except OSError as exc:
                _unwritable(folder, exc)
    return CalibrationResult(ranges, key, len(images), False)


def _compute(
    model: onnx.ModelProto,
    tensors: list[str],
    images: Sequence[Path | str],
    preprocess: Callable[[Path | str], dict[str, np.ndarray]],
    method: str,
    percentile: float,
    threads: int,
    progress: Callable[[str, int], Iterator[int]] | None,
) -> dict[str, Range]:
    minmax, hists = observe(model, tensors, images, preprocess, method != "minmax", threads, progress, method)
    return {t: final_range(method, minmax[t], hists.get(t), percentile) for t in tensors}


def observe(
    model: onnx.ModelProto,
    tensors: list[str],
    images: Sequence[Path | str],
    preprocess: Callable[[Path | str], dict[str, np.ndarray]],
    histograms: bool,
    threads: int,
    progress: Callable[[str, int], Iterator[int]] | None,
    label: str = "histograms",
) -> tuple[dict[str, MinMax], dict[str, Histogram]]:
    """The observers of every tensor: min/max (one pass), then fixed-range histograms (a second pass) if asked.
    Every range method is a function of these, so one observation serves several methods."""
    import onnxruntime as ort

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
    if histograms:
        hists = {t: Histogram(minmax[t].low, minmax[t].high) for t in wanted}
        for values in batches(f"calibration: {label}"):
            for name, value in values.items():
                hists[name].update(value)
    return minmax, hists


def parse_candidate(text: str) -> tuple[str, float]:
    """``percentile:99.99`` -> ("percentile", 99.99); ``mse`` -> ("mse", 99.99) (the percentile is then unused)."""
    method, _, value = text.partition(":")
    if method not in RANGE_METHODS or (value and method != "percentile"):
        raise ValueError(f"unknown range candidate {text!r}: use minmax, entropy, mse or percentile:P (50 < P <= 100)")
    percentile = float(value) if value else 99.99
    if not 50 < percentile <= 100:
        raise ValueError(f"percentile of {text!r} must be in (50, 100]")
    return method, percentile


def collect_candidates(
    model: onnx.ModelProto,
    tensors: list[str],
    images: Sequence[Path | str],
    preprocess: Callable[[Path | str], dict[str, np.ndarray]],
    candidates: Sequence[str],
    threads: int = 2,
    progress: Callable[[str, int], Iterator[int]] | None = None,
    use_cache: bool = True,
) -> dict[str, CalibrationResult]:
    """The ranges of several range methods (``parse_candidate`` strings) from one observation of ``images``: each
    candidate is cached under the same key :func:`collect_ranges` uses, so the chosen one is a cache hit there."""
    out: dict[str, CalibrationResult] = {}
    missing: list[tuple[str, str, float, dict, str]] = []
    folder = cache_dir() if use_cache else None
    for text in candidates:
        method, percentile = parse_candidate(text)
        settings = {"method": method, "percentile": percentile if method == "percentile" else None, "version": CACHE_VERSION}
        key = cache_key(model, images, tensors, settings)
        ranges = read_entry(folder / f"{key}.json", key, tensors, settings, len(images))[0] if folder else None
        if ranges is not None:
            out[text] = CalibrationResult(ranges, key, len(images), True)
        else:
            missing.append((text, method, percentile, settings, key))
    if missing:
        need_hist = any(m != "minmax" for _, m, _, _, _ in missing)
        minmax, hists = observe(model, tensors, images, preprocess, need_hist, threads, progress, "histograms for " + ", ".join(t for t, *_ in missing))
        for text, method, percentile, settings, key in missing:
            ranges = {t: final_range(method, minmax[t], hists.get(t), percentile) for t in tensors}
            out[text] = CalibrationResult(ranges, key, len(images), False)
            if folder is not None:
                with _entry_lock(folder, key) as locked, contextlib.suppress(ValueError):  # a non-finite range is never cached
                    entry = cache_entry(key, ranges, settings, len(images))
                    if locked:
                        try:
                            write_json_atomic(folder / f"{key}.json", entry)
                        except OSError as exc:
                            _unwritable(folder, exc)
    return {text: out[text] for text in candidates}
