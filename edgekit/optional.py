"""One way to import an optional dependency: a missing extra is one error naming the ``pip install`` that fixes it."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from edgekit.errors import EdgekitError


def missing(package: str, extra: str, purpose: str, path: str | Path | None = None) -> EdgekitError:
    """The error for an optional ``package`` that is not installed: what needs it and the extra that installs it."""
    return EdgekitError(f"{package} is not installed (needed for {purpose})", path, f'pip install "edgekit[{extra}]"')


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or ``EdgekitError`` naming the package, what needs it and ``pip install "edgekit[extra]"``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing(module.split(".")[0].replace("_", "-"), extra, purpose) from exc
