"""Peak resident memory of a block of work (sampled), and model size on disk."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psutil

from edgekit.errors import EdgekitError


class PeakMemory:
    """Sample this process's RSS every ``interval`` seconds in a thread; ``peak_mb`` and ``delta_mb`` (over the start)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss_mb(self) -> float:
        return self.process.memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> PeakMemory:
        self._stop.clear()
        self.start_mb = self.peak_mb = self._rss_mb()
        self._thread = threading.Thread(target=self._sample, name="edgekit-peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())

    @property
    def delta_mb(self) -> float:
        """Peak RSS minus RSS at entry, in MiB."""
        return self.peak_mb - self.start_mb


def _external_data_files(path: Path) -> set[Path]:
    """Files next to an ONNX model that its initializers reference as external data."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError):  # not a readable ONNX file: count the file alone
        return set()
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return {path.parent / loc for loc in locations if (path.parent / loc).is_file()}


def model_size_bytes(path: str | Path) -> int:
    """Size of a model file; for ``.onnx`` plus the external-data files it references (each counted once), for an
    OpenVINO ``.xml`` plus its ``.bin``."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError("model file not found", path, "check the path")
    extra = _external_data_files(path) if path.suffix == ".onnx" else set()
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        extra = {path.with_suffix(".bin")}
    return path.stat().st_size + sum(p.stat().st_size for p in extra)
