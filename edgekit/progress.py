"""Progress bars for long work (rich), quiet when not on a terminal or when disabled."""

from __future__ import annotations

import os
from collections.abc import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgekit.console import console, terminal_stderr


def quiet() -> bool:
    return os.environ.get("EDGEKIT_PROGRESS") == "0"


def log(message: str) -> None:
    """A status line on stderr (silenced by ``EDGEKIT_PROGRESS=0``)."""
    if not quiet():
        console.log(message)


def enabled() -> bool:
    return os.environ.get("EDGEKIT_PROGRESS", "1") != "0" and (terminal_stderr().isatty() or os.environ.get("EDGEKIT_PROGRESS") == "1")


def track(label: str, total: int) -> Iterator[int]:
    """Yield ``0..total-1`` while showing a progress bar labelled ``label``."""
    if not enabled():
        log(f"{label} ({total})")
        yield from range(total)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=total)
        for i in range(total):
            yield i
            bar.advance(task)
