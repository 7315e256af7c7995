"""The caches never silently give wrong results: an entry that does not verify (scaled or swapped ranges, a truncated
file, another key's entry, garbage) is one warning and a recompute; an unusable cache folder (below a file, a
read-only or full filesystem) is one warning and a run without a cache; two runs computing one key take turns.

Real faults on real files: the tiny YOLOv5n recipe through the command line, and ``collect_ranges`` on a small real
ONNX model (real onnxruntime sessions) for the finer cases. Nothing under test is mocked."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import CLIP_BPE, REPO, edgekit
from onnx import TensorProto, helper, numpy_helper

from edgekit.quantization.calibration import CacheWarning, cache_dir, collect_ranges, read_entry, verify_entry
from faults.tiny import tiny_recipe

# ---------------------------------------------------------------------------------------------------------------
# a small real model: Conv -> Relu -> Conv, calibrated over texts turned into seeded random feeds

TENSORS = ["conv1", "relu1", "conv2"]
SAMPLES = [f"sample-{i}" for i in range(8)]


def small_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(4, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("Conv", ["relu1", "w2"], ["conv2"], pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["conv2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32, 32])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def feed(sample: str) -> dict[str, np.ndarray]:
    seed = int(sample.rsplit("-", 1)[1])
    return {"x": np.random.default_rng(seed).normal(size=(1, 3, 32, 32)).astype(np.float32)}


def calibrate(samples=SAMPLES):
    """collect_ranges with every warning recorded: (result, [CacheWarning messages])."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = collect_ranges(small_model(), TENSORS, samples, feed, method="percentile", threads=1)
    return result, [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]


def entry_path(key: str) -> Path:
    return cache_dir() / f"{key}.json"


def assert_entry_verifies(path: Path, ranges) -> None:
    data = json.loads(path.read_text())
    found, problem = verify_entry(data, data["key"], list(data["ranges"]), data["settings"], data["images"])
    assert found == dict(ranges), problem
    assert path.name == f"{data['key']}.json"
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".partial")]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_entry_is_signed_and_reused(cache):
    first, warned = calibrate()
    assert not first.from_cache and not warned
    data = json.loads(entry_path(first.key).read_text())
    assert data["key"] == first.key and len(data["sha256"]) == 64 and data["settings"]["version"] == 2
    assert read_entry(entry_path(first.key), first.key, TENSORS, data["settings"], len(SAMPLES)) == (first.ranges, "")
    again, warned = calibrate()
    assert again.from_cache and again.ranges == first.ranges and not warned


def _ranges(raw: bytes, change) -> bytes:
    data = json.loads(raw)
    data["ranges"] = {k: change(lo, hi) for k, (lo, hi) in data["ranges"].items()}
    return json.dumps(data).encode()


def _missing_tensor_resigned(raw: bytes) -> bytes:
    """A forger who drops a tensor and re-signs: the checksum holds, the tensor check does not."""
    from edgekit.quantization.calibration import cache_entry
    from edgekit.quantization.spec import Range

    data = json.loads(raw)
    ranges = {k: Range(*v) for k, v in data["ranges"].items() if k != "relu1"}
    return json.dumps(cache_entry(data["key"], ranges, data["settings"], data["images"])).encode()


def _unsigned(raw: bytes) -> bytes:
    data = json.loads(raw)
    return json.dumps({"ranges": data["ranges"], "settings": data["settings"], "images": data["images"]}).encode()


#: name -> (bytes of this key's entry, bytes of another key's entry) -> the bad bytes, and the reason the warning gives
CORRUPTIONS = {
    "scaled_x100": (lambda raw, _: _ranges(raw, lambda lo, hi: [lo * 100, hi * 100]), "sha256 does not match"),
    "swapped_low_high": (lambda raw, _: _ranges(raw, lambda lo, hi: [hi, lo]), "sha256 does not match"),
    "truncated": (lambda raw, _: raw[: len(raw) // 2], "not valid JSON"),
    "other_key": (lambda _, other: other, "another key"),
    "garbage": (lambda _raw, _other: b"\x00\xff not json at all \x89PNG", "not valid JSON"),
    "missing_tensor_resigned": (lambda raw, _: _missing_tensor_resigned(raw), "tensors differ"),
    "unsigned_old_layout": (lambda raw, _: _unsigned(raw), "not a calibration cache entry"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_bad_entry_warns_once_and_is_recomputed(cache, corruption):
    first, _ = calibrate()
    other, _ = calibrate(SAMPLES[:4])  # a real entry of another key, to copy under this key's name
    path = entry_path(first.key)
    raw = path.read_bytes()
    change, reason = CORRUPTIONS[corruption]
    path.write_bytes(change(raw, entry_path(other.key).read_bytes()))

    again, warned = calibrate()
    assert len(warned) == 1, warned
    assert str(path) in warned[0] and "recomputing" in warned[0] and reason in warned[0], warned[0]
    assert not again.from_cache and again.ranges == first.ranges
    assert path.read_bytes() == raw  # rewritten whole, identical to the first computation
    assert_entry_verifies(path, first.ranges)
    third, warned = calibrate()
    assert third.from_cache and third.ranges == first.ranges and not warned


def test_entry_that_cannot_be_read_is_a_miss(cache):
    first, _ = calibrate()
    path = entry_path(first.key)
    path.unlink()
    path.mkdir()  # reading it fails with EISDIR (root ignores chmod, so a directory stands in for an unreadable file)
    again, warned = calibrate()
    assert not again.from_cache and again.ranges == first.ranges
    assert warned and all("recomputing" in w or "running without a cache" in w for w in warned), warned
    assert str(path) in warned[0] and "EISDIR" in warned[0]


def test_cache_below_a_regular_file_runs_without_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EDGEKIT_CACHE", str(blocker / "cache"))
    reference = collect_ranges(small_model(), TENSORS, SAMPLES, feed, threads=1, use_cache=False)
    for _ in range(2):
        result, warned = calibrate()
        assert not result.from_cache and result.ranges == reference.ranges
        assert len(warned) == 1 and "is not writable (ENOTDIR" in warned[0] and "running without a cache" in warned[0], warned


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_full_cache_filesystem_runs_without_cache(tmp_path, monkeypatch):
    """The lock file (empty) fits, the entry does not: the write fails with ENOSPC and leaves no .partial file."""
    with tmpfs(tmp_path / "full", "size=64k") as full:
        (full / "calibration").mkdir()
        with open(full / "filler", "wb", buffering=0) as handle, contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 4096)
        monkeypatch.setenv("EDGEKIT_CACHE", str(full))
        result, warned = calibrate()
        assert not result.from_cache
        assert len(warned) == 1 and "is not writable (ENOSPC" in warned[0] and "running without a cache" in warned[0], warned
        assert not [p.name for p in (full / "calibration").iterdir() if p.suffix != ".lock"]


CONCURRENT = textwrap.dedent("""
    import json, pathlib, sys, time
    sys.path[:0] = [{tests!r}]
    from faults.test_cache import SAMPLES, TENSORS, feed, small_model
    from edgekit.quantization.calibration import collect_ranges
    model = small_model()
    barrier = pathlib.Path(sys.argv[1])
    (barrier / sys.argv[2]).touch()
    while len(list(barrier.iterdir())) < 2:  # start together
        time.sleep(0.01)
    result = collect_ranges(model, TENSORS, SAMPLES * 40, feed, threads=1)
    print(json.dumps({{"from_cache": result.from_cache, "key": result.key,
                      "ranges": {{k: [v.low, v.high] for k, v in result.ranges.items()}}}}))
""")


def test_two_runs_on_one_key_compute_once(cache, tmp_path):
    script = tmp_path / "calibrate.py"
    script.write_text(CONCURRENT.format(tests=str(REPO / "tests")))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    runs = [subprocess.Popen([sys.executable, str(script), str(barrier), str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ)) for i in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(r["from_cache"] for r in results) == [False, True]  # exactly one computed, the other waited and read
    assert results[0]["ranges"] == results[1]["ranges"] and results[0]["key"] == results[1]["key"]
    from edgekit.quantization.spec import Range

    assert_entry_verifies(cache / "calibration" / f"{results[0]['key']}.json", {k: Range(*v) for k, v in results[0]["ranges"].items()})
    assert sorted(p.suffix for p in (cache / "calibration").iterdir()) == [".json", ".lock"]


# ---------------------------------------------------------------------------------------------------------------
# the real command line on the tiny recipe


def int8_result(run: Path) -> tuple[float, bool]:
    variant = next(v for v in json.loads((run / "report.json").read_text())["variants"] if v["precision"] == "int8")
    return variant["metrics"]["mAP50-95"], variant["manifest"]["settings"]["quantization"]["from_cache"]


def assert_one_warning(result, *needles: str) -> str:
    err = result.stderr
    assert result.returncode == 0, (result.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("warning:") and "cache" in line]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_cli_recomputes_a_scaled_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    recipe = tiny_recipe(tmp_path)
    first = edgekit("export", recipe, "--out", tmp_path / "run1")
    assert first.returncode == 0, first.stderr[-3000:]
    (entry,) = (tmp_path / "cache" / "calibration").glob("*.json")
    original = entry.read_bytes()
    mAP, from_cache = int8_result(tmp_path / "run1")
    assert not from_cache and mAP > 0.05

    data = json.loads(original)  # valid JSON, old checksum, every range x100: used as-is this gave int8 mAP 0.0
    data["ranges"] = {k: [lo * 100, hi * 100] for k, (lo, hi) in data["ranges"].items()}
    entry.write_text(json.dumps(data))
    second = edgekit("export", recipe, "--out", tmp_path / "run2")
    assert_one_warning(second, str(entry), "sha256 does not match", "recomputing")
    assert int8_result(tmp_path / "run2") == (mAP, False)
    assert entry.read_bytes() == original


def test_cli_cache_below_a_regular_file(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "file" / "cache"))
    result = edgekit("export", tiny_recipe(tmp_path), "--out", tmp_path / "run")
    assert_one_warning(result, str(tmp_path / "file" / "cache"), "is not writable (ENOTDIR", "running without a cache")
    assert (tmp_path / "run" / "report.json").is_file()
    assert int8_result(tmp_path / "run")[1] is False


def test_cli_read_only_cache(tmp_path, monkeypatch):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        monkeypatch.setenv("EDGEKIT_CACHE", str(ro))
        result = edgekit("export", tiny_recipe(tmp_path), "--out", tmp_path / "run")
        assert_one_warning(result, str(ro / "calibration"), "is not writable (EROFS", "running without a cache")
        assert (tmp_path / "run" / "report.json").is_file()


# ---------------------------------------------------------------------------------------------------------------
# the tokenizer cache ($EDGEKIT_CACHE/tokenizers): the same verify-or-recompute rule


def load_tokenizer():
    from edgekit.models.clip import tokenizer as tk

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = tk.load_tokenizer(CLIP_BPE)
    return tok, [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]


CAPTIONS = ["a dog on a skateboard", "Two people walking beside a red bus.", "an elephant"]


@pytest.mark.skipif(not CLIP_BPE.is_file(), reason="OpenAI's CLIP BPE asset not found")
def test_tokenizer_cache_verifies_or_recomputes(cache, tmp_path, monkeypatch):
    fresh, warned = load_tokenizer()
    ids = fresh(CAPTIONS)["input_ids"].tolist()
    assert not warned
    folder = next(p for p in (cache / "tokenizers").iterdir() if p.is_dir())
    vocab = json.loads((folder / "vocab.json").read_text())
    a, b = "dog</w>", "elephant</w>"
    vocab[a], vocab[b] = vocab[b], vocab[a]  # valid JSON, wrong ids
    (folder / "vocab.json").write_text(json.dumps(vocab))
    again, warned = load_tokenizer()
    assert len(warned) == 1 and str(folder) in warned[0] and "recomputing" in warned[0], warned
    assert again(CAPTIONS)["input_ids"].tolist() == ids
    merges = folder / "merges.txt"
    merges.write_bytes(merges.read_bytes()[: merges.stat().st_size // 2])  # truncated
    again, warned = load_tokenizer()
    assert len(warned) == 1 and "recomputing" in warned[0], warned
    assert again(CAPTIONS)["input_ids"].tolist() == ids
    again, warned = load_tokenizer()
    assert not warned and again(CAPTIONS)["input_ids"].tolist() == ids

    shutil.rmtree(cache)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "file" / "cache"))
    unwritable, warned = load_tokenizer()
    assert len(warned) == 1 and "is not writable" in warned[0] and "running without a cache" in warned[0], warned
    assert unwritable(CAPTIONS)["input_ids"].tolist() == ids
