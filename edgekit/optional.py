"""One way to import an optional dependency: a missing extra is one error naming the ``pip install`` that fixes it."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgekit.errors import EdgekitError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or ``EdgekitError`` naming the package, what needs it and ``pip install "edgekit[extra]"``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0].replace("_", "-")
        raise EdgekitError(f"{package} is not installed (needed for {purpose})", fix=f'pip install "edgekit[{extra}]"') from exc
