"""Latency statistics on a real ONNX Runtime session, peak-memory sampling, model size, device fingerprint."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekit.backends.onnxruntime.runner import OnnxRuntimeRunner
from edgekit.errors import EdgekitError
from edgekit.profiling.device import FLAGS_OF_INTEREST, device_fingerprint, parse_proc_cpuinfo
from edgekit.profiling.latency import LatencyStats, measure_latency
from edgekit.profiling.memory import PeakMemory, model_size_bytes
from edgekit.runners.base import Runner, TensorMeta


def _matmul_model(n: int = 256) -> onnx.ModelProto:
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).random((n, n), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def matmul_path(tmp_path: Path) -> Path:
    onnx.save(_matmul_model(), tmp_path / "mm.onnx")
    return tmp_path / "mm.onnx"


class SleepRunner(Runner):
    """A runner whose inference takes a known time (sleeps), counting its calls."""

    backend = "sleep"

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls = seconds, 0

    def load(self) -> None:
        pass

    @property
    def inputs(self) -> list[TensorMeta]:
        return [TensorMeta("x", (1,), np.dtype(np.float32))]

    @property
    def outputs(self) -> list[TensorMeta]:
        return [TensorMeta("x", (1,), np.dtype(np.float32))]

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        time.sleep(self.seconds)
        return dict(feed)

    def close(self) -> None:
        pass


def test_interleaved_latency_times_every_runner_each_round(matmul_path):
    from edgekit.profiling.latency import measure_latency_interleaved

    feed = {"x": np.ones((64, 256), np.float32)}
    with OnnxRuntimeRunner(matmul_path, threads=1) as a, OnnxRuntimeRunner(matmul_path, threads=1) as b:
        stats = measure_latency_interleaved({"a": (a, feed), "b": (b, feed)}, warmup=1, runs=10)
    assert set(stats) == {"a", "b"} and stats["a"].runs == stats["b"].runs == 10
    assert all(0 < s.min <= s.median <= s.p90 <= s.p99 for s in stats.values())


# --- latency -------------------------------------------------------------------------------------------------


def test_latency_on_onnxruntime_is_ordered_and_consistent(matmul_path):
    feed = {"x": np.ones((16, 256), np.float32)}
    with OnnxRuntimeRunner(matmul_path, threads=1) as runner:
        stats = measure_latency(runner, feed, warmup=3, runs=30, batch=16)
    assert isinstance(stats, LatencyStats)
    assert stats.runs == 30 and stats.warmup == 3 and stats.batch == 16
    assert 0 < stats.min <= stats.median <= stats.p90 <= stats.p99
    assert stats.min <= stats.mean and stats.std >= 0
    assert stats.throughput_per_s == pytest.approx(16 * 1000.0 / stats.median)
    d = stats.to_dict()
    assert set(d) == {"median", "p90", "p99", "min", "mean", "std", "runs", "warmup", "throughput_per_s", "batch", "samples_ms"}
    assert len(d["samples_ms"]) == d["runs"]
    assert json.loads(json.dumps(d)) == d


def test_latency_is_in_milliseconds_and_counts_calls():
    runner = SleepRunner(0.004)
    stats = measure_latency(runner, {"x": np.zeros(1, np.float32)}, warmup=2, runs=10)
    assert runner.calls == 12
    assert 4.0 <= stats.min and stats.median < 200.0  # sleep(4 ms) never returns early; generous upper bound
    assert stats.throughput_per_s < 250.0


def test_latency_progress_bar(matmul_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEKIT_PROGRESS", "1")  # force the rich bar even without a terminal
    with OnnxRuntimeRunner(matmul_path, threads=1) as runner:
        stats = measure_latency(runner, {"x": np.ones((1, 256), np.float32)}, warmup=1, runs=5, progress=True)
    assert stats.runs == 5
    assert "latency (onnxruntime)" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs", [{"runs": 0}, {"warmup": -1}, {"batch": 0}])
def test_latency_rejects_bad_settings(kwargs):
    with pytest.raises(EdgekitError, match="invalid benchmark settings"):
        measure_latency(SleepRunner(0.0), {}, **kwargs)


# --- memory --------------------------------------------------------------------------------------------------


def test_peak_memory_sees_a_freed_allocation():
    with PeakMemory() as memory:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, every page written
        time.sleep(0.05)  # the sampler thread must see it: it is freed before the block ends
        del block
    assert memory.delta_mb >= 150
    assert memory.peak_mb >= memory.start_mb + 150
    with memory:  # reusable: a second block starts from the current RSS
        pass
    assert 0 <= memory.delta_mb < 50


def test_model_size_counts_referenced_external_data(tmp_path):
    model = _matmul_model(512)  # 1 MiB of weights
    onnx.save(model, tmp_path / "inline.onnx")
    assert model_size_bytes(tmp_path / "inline.onnx") == (tmp_path / "inline.onnx").stat().st_size
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    (tmp_path / "unrelated.data").write_bytes(b"x" * 1000)  # not referenced: not counted
    total = (tmp_path / "ext.onnx").stat().st_size + (tmp_path / "ext.onnx.data").stat().st_size
    assert model_size_bytes(tmp_path / "ext.onnx") == total and total > 512 * 512 * 4
    (tmp_path / "model.engine").write_bytes(b"\x00" * 1234)
    assert model_size_bytes(tmp_path / "model.engine") == 1234
    (tmp_path / "garbage.onnx").write_bytes(b"\xff" * 100)
    assert model_size_bytes(tmp_path / "garbage.onnx") == 100
    with pytest.raises(EdgekitError, match="not found"):
        model_size_bytes(tmp_path / "missing.onnx")


# --- device --------------------------------------------------------------------------------------------------


def test_device_fingerprint_contents():
    info = device_fingerprint()
    json.loads(json.dumps(info))
    for key in ("cpu_model", "logical_cores", "physical_cores", "isa_flags", "memory_gb", "os", "machine", "python", "versions"):
        assert key in info, key
    assert info["cpu_model"] and info["logical_cores"] > 0 and info["physical_cores"] > 0
    assert info["logical_cores"] >= info["physical_cores"] and info["memory_gb"] > 0
    assert isinstance(info["isa_flags"], list) and all(isinstance(f, str) and f in FLAGS_OF_INTEREST for f in info["isa_flags"])
    assert info["machine"] == platform.machine() and info["python"] == platform.python_version()
    assert {"numpy", "onnx", "onnxruntime", "pycocotools"} <= set(info["versions"])
    assert "torchvision" not in info["versions"]
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]
    info["cpu_model"] = "changed"
    assert device_fingerprint()["cpu_model"] != "changed"  # callers get a copy of the cached value


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="Linux only")
def test_device_flags_agree_with_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text()
    kernel_flags = {f for line in text.splitlines() if line.split(":")[0].strip() in ("flags", "Features") for f in line.split(":", 1)[1].split()}
    assert set(device_fingerprint()["isa_flags"]) == kernel_flags & set(FLAGS_OF_INTEREST)


def test_parse_proc_cpuinfo_x86_and_arm():
    x86 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6338\nflags\t\t: fpu sse4_2 avx avx2 avx512f avx512_vnni amx_tile\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Gold 6338\n"
    assert parse_proc_cpuinfo(x86) == ("Intel(R) Xeon(R) Gold 6338", {"fpu", "sse4_2", "avx", "avx2", "avx512f", "avx512_vnni", "amx_tile"})
    arm = "processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes asimddp i8mm\nCPU implementer\t: 0x41\n"
    model, flags = parse_proc_cpuinfo(arm)
    assert model is None and {"asimd", "asimddp", "i8mm"} <= flags
