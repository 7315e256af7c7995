"""OpenVINO CPU runner: ONNX or OpenVINO IR (``.xml`` + ``.bin``), compiled with explicit, read-back properties."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runners.base import Runner, TensorMeta

PRECISION_HINTS = ("f32", "bf16", "f16")


def import_openvino():
    """``import openvino`` or an ``EdgekitError`` naming the install command."""
    from edgekit.optional import require

    return require("openvino", "openvino", "openvino targets")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def read_model(path: str | Path):
    """``openvino.Core().read_model`` with a one-line error naming the file when it is missing or corrupt."""
    ov = import_openvino()
    path = Path(path)
    if not path.is_file():
        raise EdgekitError("model not found", path, "check the path or run `edgekit export` first")
    if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
        raise EdgekitError("OpenVINO IR weights file missing", path.with_suffix(".bin"), "keep the .bin next to the .xml")
    try:
        return ov.Core().read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError (and others) for unreadable models
        raise EdgekitError(
            f"OpenVINO cannot read this model ({_first_line(exc)})",
            path,
            "re-export the model, or check that the file is a complete ONNX model or OpenVINO IR (.xml + .bin)",
        ) from exc


class OpenVinoRunner(Runner):
    """Runs an ONNX model or OpenVINO IR with OpenVINO (CPU by default).

    The model is compiled with explicit properties -- ``INFERENCE_NUM_THREADS`` (when ``threads`` is given),
    ``INFERENCE_PRECISION_HINT`` (``f32``/``bf16``/``f16``; ``None`` leaves the device default, which is bf16 on
    CPUs with AMX/AVX512-BF16) and ``PERFORMANCE_HINT=LATENCY`` -- and ``settings`` holds the values read back
    from the compiled model, so a report states what actually ran.
    """

    backend = "openvino"

    def __init__(self, model_path: str | Path, threads: int | None = None, precision_hint: str | None = "f32", device: str = "CPU") -> None:
        if precision_hint is not None and precision_hint not in PRECISION_HINTS:
            raise EdgekitError(f"unknown OpenVINO precision hint {precision_hint!r}", fix=f"use one of: {', '.join(PRECISION_HINTS)} or None")
        self.model_path = Path(model_path)
        self.threads = threads
        self.precision_hint = precision_hint
        self.device = device
        self.compiled = None
        self._request = None
        self.settings: dict[str, Any] = {}

    def compile_config(self) -> dict[str, Any]:
        """The properties passed to ``compile_model``."""
        ov = import_openvino()
        import openvino.properties as props
        import openvino.properties.hint as hints

        config: dict[str, Any] = {hints.performance_mode: hints.PerformanceMode.LATENCY}
        if self.threads:
            config[props.inference_num_threads] = int(self.threads)
        if self.precision_hint is not None:
            config[hints.inference_precision] = getattr(ov.Type, self.precision_hint)
        return config

    def load(self) -> None:
        if self.compiled is not None:
            return
        ov = import_openvino()
        import openvino.properties as props
        import openvino.properties.hint as hints

        model = read_model(self.model_path)
        core = ov.Core()
        try:
            self.compiled = core.compile_model(model, self.device, self.compile_config())
        except Exception as exc:
            raise EdgekitError(
                f"OpenVINO cannot compile this model for {self.device} ({_first_line(exc)})",
                self.model_path,
                f"check the device (available: {', '.join(core.available_devices)}) and the precision hint",
            ) from exc
        self._request = self.compiled.create_infer_request()
        readback = {
            "PERFORMANCE_HINT": hints.performance_mode,
            "INFERENCE_PRECISION_HINT": hints.inference_precision,
            "INFERENCE_NUM_THREADS": props.inference_num_threads,
            "NUM_STREAMS": props.num_streams,
            "EXECUTION_MODE_HINT": hints.execution_mode,
            "OPTIMAL_NUMBER_OF_INFER_REQUESTS": props.optimal_number_of_infer_requests,
        }
        settings: dict[str, Any] = {"device": self.device, "openvino": ov.get_version()}
        for key, prop in readback.items():
            try:
                value = self.compiled.get_property(prop)
            except Exception:  # a device may not expose every property
                continue
            if isinstance(value, ov.Type):
                value = value.get_type_name()  # "f32", "bf16"
            elif hasattr(value, "name") and not isinstance(value, (int, float, bool, str)):
                value = value.name  # enums: LATENCY, PERFORMANCE
            settings[key] = value if isinstance(value, (int, float, bool, str)) else str(value)
        self.settings = settings

    @staticmethod
    def _meta(ports) -> list[TensorMeta]:
        metas = []
        for port in ports:
            shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
            try:
                dtype = np.dtype(port.get_element_type().to_dtype())
            except Exception:
                dtype = np.dtype(np.float32)
            metas.append(TensorMeta(port.get_any_name(), shape, dtype))
        return metas

    @property
    def inputs(self) -> list[TensorMeta]:
        self.load()
        return self._meta(self.compiled.inputs)

    @property
    def outputs(self) -> list[TensorMeta]:
        self.load()
        return self._meta(self.compiled.outputs)

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._request.infer(feed)  # copies outputs (share_outputs=False)
        return {port.get_any_name(): np.asarray(results[port]) for port in self.compiled.outputs}

    def close(self) -> None:
        self._request = None
        self.compiled = None
        super().close()
