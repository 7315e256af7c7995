"""Checks that run in about a second, before the first heavy stage of ``edgekit export``.

* every path the recipe names exists (found generically: each field typed ``edgekit.config.PathText``, in every
  section, the family's and backends' included), so a missing annotations file fails now, not after the export;
* every name the load did not already check (``budgets`` metrics, ``quantization.keep_float.op_types``) is known;
* the run's estimated peak memory (``Family.estimate_memory_bytes``) fits in the memory available now; ``force``
  (``edgekit export --force``) runs it anyway.

Names checked at load (``load_recipe``), for the record: ``model.family``, every target's backend and precision,
``export.passes`` with their options (``ExportSpec._configured_passes``), and the families' ``Literal`` choices.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any

from pydantic import AfterValidator, BaseModel

from edgekit.assets import expand
from edgekit.config import CREATED
from edgekit.errors import EdgekitError

GIB = 1 << 30
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")  # `org/name` (clip/vlm weights and tokenizers may be hub ids)


# --- paths --------------------------------------------------------------------------------------------------------


def _is_path_type(annotation: Any) -> bool:
    """``PathText`` (``Annotated[str, AfterValidator(expand)]``) anywhere in ``annotation`` (``PathText | None``,
    ``list[PathText]``) and not marked ``CREATED`` (a file the run writes, such as a timing cache)."""
    if typing.get_origin(annotation) is typing.Annotated:
        extras = annotation.__metadata__
        if CREATED in extras:
            return False
        if any(isinstance(m, AfterValidator) and m.func is expand for m in extras):
            return True
    return any(_is_path_type(a) for a in typing.get_args(annotation))


def _field_is_path(info) -> bool:
    if CREATED in info.metadata:
        return False
    return any(isinstance(m, AfterValidator) and m.func is expand for m in info.metadata) or _is_path_type(info.annotation)


def recipe_paths(model: BaseModel, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, path)`` of every ``PathText`` value set in ``model`` and its sub-sections."""
    found: list[tuple[str, str]] = []

    def walk(value: Any, key: str, is_path: bool) -> None:
        if isinstance(value, BaseModel):
            for name, info in type(value).model_fields.items():
                walk(getattr(value, name), f"{key}.{name}" if key else name, _field_is_path(info))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{key}.{i}", is_path)
        elif isinstance(value, dict):
            for k, item in value.items():
                walk(item, f"{key}.{k}", is_path)
        elif is_path and isinstance(value, str) and value:
            found.append((key, value))

    walk(model, prefix, False)
    return found


def check_paths(recipe, recipe_path: str | Path) -> None:
    """Every path in the recipe exists (a hub id ``org/name`` for model weights/config/tokenizer is let through)."""
    for key, value in recipe_paths(recipe):
        if Path(value).exists():
            continue
        if key in ("model.weights", "model.config", "model.tokenizer") and recipe.model.family in ("clip", "vlm") and _HUB_ID.match(value):
            continue
        raise EdgekitError(f"'{key}': {value} not found", recipe_path,
                           f"correct `{key}` in the recipe (paths may use ${{EDGEKIT_ASSETS}}, now {os.environ.get('EDGEKIT_ASSETS', 'unset')})")


# --- names --------------------------------------------------------------------------------------------------------


def _suggest(name: str, known: list[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def check_names(recipe, recipe_path: str | Path) -> None:
    """Names the load leaves to later stages: budgeted metrics (a typo would fail only after the whole run) and
    ``keep_float.op_types`` (a typo would silently keep nothing in float)."""
    from edgekit import registry

    family = registry.family(recipe.model.family)
    known = list(family.metrics)
    for metric in recipe.budgets:
        if known and metric not in known:
            raise EdgekitError(f"budget on unknown metric '{metric}'{_suggest(metric, known)}: the {family.name} family measures "
                               f"{', '.join(known)}", recipe_path, f"rename or remove budgets.{metric}")
    q = recipe.quantization
    if q is not None and q.keep_float.op_types:
        import onnx.defs

        ops = sorted({s.name for s in onnx.defs.get_all_schemas_with_history()})
        for op in q.keep_float.op_types:
            if op not in ops:
                raise EdgekitError(f"quantization.keep_float.op_types names '{op}', not an ONNX operator{_suggest(op, ops)}", recipe_path,
                                   "use ONNX op type names as in the graph (Conv, MatMul, Concat, ...)")


# --- memory -------------------------------------------------------------------------------------------------------


def available_memory_bytes() -> int | None:
    """Memory a new allocation can get now: ``MemAvailable`` (psutil, else ``/proc/meminfo``); None where unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform: fall back
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(recipe, recipe_path: str | Path, force: bool = False) -> int | None:
    """The family's peak-memory estimate against the memory available; returns the estimate (None: no estimate)."""
    from edgekit import registry

    estimate = registry.family(recipe.model.family).estimate_memory_bytes(recipe)
    limit = available_memory_bytes()
    if estimate is None or limit is None or estimate <= limit or force:
        return estimate
    m = recipe.model
    raise EdgekitError(
        f"this run needs about {estimate / GIB:.1f} GiB (model.input_size {m.input_size}, batch {m.batch}) but {limit / GIB:.1f} GiB "
        "of memory is available", recipe_path,
        "lower model.input_size (or model.batch), free memory, or pass --force to run anyway")


def preflight(recipe, recipe_path: str | Path, force: bool = False) -> None:
    """Refuse, in about a second, a run that would fail later: a missing path, an unknown name, more memory than is
    available (``force`` skips only the memory check). Raises ``EdgekitError`` naming the key, the recipe and the fix."""
    check_paths(recipe, recipe_path)
    check_names(recipe, recipe_path)
    check_memory(recipe, recipe_path, force)
