"""User-facing errors: one line that names the file and the fix; the CLI exits with code 2."""

from __future__ import annotations

from pathlib import Path


class EdgekitError(Exception):
    """An error caused by user input (files, recipes, settings), printed as one line without a traceback."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None, fix: str | None = None) -> None:
        parts = [f"{path}: {message}" if path is not None else message]
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__(" -- ".join(parts))
        self.path = None if path is None else Path(path)
        self.fix = fix
