"""The registry of model families and backends: name -> class, imported lazily, extended by entry points.

A third-party package adds a backend or a family without forking edgekit by declaring an entry point::

    [project.entry-points."edgekit.backends"]
    mybackend = "mypkg.backend:MyBackend"      # a subclass of edgekit.backends.base.Backend

    [project.entry-points."edgekit.families"]
    myfamily = "mypkg.family:MyFamily"         # a subclass of edgekit.families.base.Family

Built-in entries are listed below; an entry point with the same name as a built-in one is refused.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from edgekit.errors import EdgekitError

if TYPE_CHECKING:
    from edgekit.backends.base import Backend
    from edgekit.families.base import Family

BACKENDS = {
    "onnxruntime": "edgekit.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgekit.backends.openvino:OpenVinoBackend",
    "tflite": "edgekit.backends.litert:LiteRTBackend",
    "tensorrt": "edgekit.backends.tensorrt:TensorRTBackend",
}
FAMILIES = {
    "yolo": "edgekit.families.yolo:Yolo",
    "clip": "edgekit.families.clip:Clip",
    "vlm": "edgekit.families.vlm:Vlm",
    "onnx": "edgekit.families.onnx:OnnxModel",
}


def _load(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@cache
def _table(group: str) -> dict[str, str]:
    builtin = BACKENDS if group == "edgekit.backends" else FAMILIES
    table = dict(builtin)
    for ep in entry_points(group=group):
        if ep.name in builtin:
            raise EdgekitError(f"entry point {group}:{ep.name} clashes with edgekit's own {ep.name!r}", fix=f"rename it in {ep.value.split(':')[0]}'s package metadata")
        table[ep.name] = ep.value
    return table


def backend_names() -> list[str]:
    return list(_table("edgekit.backends"))


def family_names() -> list[str]:
    return list(_table("edgekit.families"))


@cache
def backend(name: str, context: str = "backend") -> Backend:
    """The backend called ``name`` (one shared instance)."""
    table = _table("edgekit.backends")
    if name not in table:
        raise ValueError(f"unknown backend {name!r}: use one of {', '.join(table)}") if context == "targets" else EdgekitError(
            f"unknown backend {name!r}", fix=f"use one of: {', '.join(table)}")
    return _load(table[name])()


def backends() -> list[Backend]:
    return [backend(name) for name in backend_names()]


@cache
def family(name: str) -> type[Family]:
    """The family class called ``name``."""
    table = _table("edgekit.families")
    if name not in table:
        raise EdgekitError(f"unknown model family {name!r}", fix=f"use one of: {', '.join(table)}")
    return _load(table[name])


def families() -> list[type[Family]]:
    return [family(name) for name in family_names()]


def backend_for_suffix(suffix: str) -> Backend | None:
    """The backend whose runner reads files ending in ``suffix`` (``.onnx``, ``.xml``, ``.tflite``, ``.engine``)."""
    return next((b for b in backends() if suffix.lower() in b.suffixes), None)


def refresh() -> None:
    """Forget what was looked up, so entry points installed since (e.g. by ``pip install`` in this process) are read."""
    for fn in (_table, backend, family):
        fn.cache_clear()
