"""Loading and saving ONNX models with one-line errors, atomic writes and provenance metadata."""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from edgekit.artifacts import write_bytes_atomic
from edgekit.errors import EdgekitError


def load_onnx(path: str | Path, check: bool = True) -> onnx.ModelProto:
    """Read an ONNX model; a missing, truncated or invalid file is an ``EdgekitError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise EdgekitError("ONNX model not found", path, "check the path")
    try:
        model = onnx.load(str(path))
        if check:
            onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise EdgekitError(f"not a valid ONNX model ({first})", path, "re-export it, or check that the file is complete") from exc
    if not model.graph.node:
        raise EdgekitError("ONNX model has no nodes (corrupt or empty)", path, "re-export it")
    return model


def save_onnx(model: onnx.ModelProto, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` atomically with deterministic serialization; ``metadata`` goes into metadata_props."""
    if metadata:
        existing = {p.key: p for p in model.metadata_props}
        for key, value in metadata.items():
            if key in existing:
                existing[key].value = str(value)
            else:
                model.metadata_props.add(key=key, value=str(value))
    return write_bytes_atomic(path, model.SerializeToString(deterministic=True))
