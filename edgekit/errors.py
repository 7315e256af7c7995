"""User-facing errors: one line that names the file and the fix; the CLI exits with code 2."""

from __future__ import annotations

import errno
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


# The machine's fault, not edgekit's: full disk, read-only or unwritable folders, over-long names.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "free space on that file system, or choose another --out",
    errno.EDQUOT: "free space within your quota, or choose another --out",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.EACCES: "you may not write there: fix its permissions, or choose another --out",
    errno.EPERM: "you may not write there: fix its permissions, or choose another --out",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ENOTDIR: "a parent of that path is a file, not a folder: choose another path",
}


def environment_error(exc: OSError, where: str | Path | None = None) -> BaseException:
    """An ``OSError`` the machine caused (disk full, read-only, ...) as an ``EdgekitError`` naming the file; any
    other ``OSError`` is returned unchanged (re-raised by the caller: it is a bug, and deserves its traceback)."""
    fix = ENVIRONMENT_ERRNOS.get(exc.errno)
    if fix is None:
        return exc
    return EdgekitError(exc.strerror or str(exc), exc.filename or where, fix)
