"""The runner contract (``edgekit.runners.base``) and a factory over the backend registry."""

from __future__ import annotations

from pathlib import Path

from edgekit.runners.base import Runner, TensorMeta

__all__ = ["Runner", "TensorMeta", "make_runner", "runner_for_file"]


def make_runner(backend: str, model_path: str | Path, threads: int | None = None) -> Runner:
    """The runner of ``backend`` (a registered name) for ``model_path``."""
    from edgekit import registry

    return registry.backend(backend).runner(model_path, threads=threads)


def runner_for_file(model_path: str | Path, backend: str | None = None, threads: int | None = None) -> Runner:
    """The runner for a model file: ``backend`` when given, else the registered backend reading its suffix."""
    from edgekit import registry
    from edgekit.errors import EdgekitError

    path = Path(model_path)
    if backend is None:
        found = registry.backend_for_suffix(path.suffix)
        if found is None:
            raise EdgekitError(f"cannot tell the backend of a '{path.suffix}' file", path, f"pass --backend {'|'.join(registry.backend_names())}")
        backend = found.name
    return make_runner(backend, path, threads=threads)
