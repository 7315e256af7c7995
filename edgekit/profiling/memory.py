"""Peak resident memory of a block of work (sampled), and model size on disk."""

from __future__ import annotations

import threading
from pathlib import Path

import psutil


class PeakMemory:
    """Sample this process's RSS every ``interval`` seconds; ``peak_mb`` and ``delta_mb`` (over the start)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.process = psutil.Process()
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()

    def _rss_mb(self) -> float:
        return self.process.memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> "PeakMemory":
        self.start_mb = self.peak_mb = self._rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())

    @property
    def delta_mb(self) -> float:
        return self.peak_mb - self.start_mb


def model_size_bytes(path: str | Path) -> int:
    """Size of an ONNX model file plus any external-data files it references."""
    path = Path(path)
    total = path.stat().st_size
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        locations = {
            entry.value
            for init in model.graph.initializer
            if init.data_location == onnx.TensorProto.EXTERNAL
            for entry in init.external_data
            if entry.key == "location"
        }
        total += sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())
    except Exception:  # not ONNX (e.g. an engine file): its own size is the size
        pass
    return total
