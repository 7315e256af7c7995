"""The run folder (``--out``): locked while a run writes it, built beside it, placed without losing anyone's files.

What a run promises about ``--out`` (README: Guarantees):

- **One run at a time.** ``--out`` is locked (``flock`` on a small lock file beside it, named by a hash of the
  folder's real path) for the whole run; a second run gets "in use by PID n". The kernel drops the lock when its
  holder dies, so a killed run never leaves it held.
- **Nothing half-built.** Everything is written into a staging folder beside the real ``--out`` (same file system,
  so the final move is a rename) that records its PID; a failed, interrupted or killed run never touches ``--out``.
  Staging folders of dead runs (recorded PID gone) are removed by the next run on the same ``--out``; the swap
  folder of a run killed during the final move is kept and named in a warning (it may hold a user's files).
- **Nothing lost.** The final move swaps the staging folder in and then moves back every entry the run did not
  create and was not asked to replace: files a user put into ``--out`` while the run was going stay (renamed
  ``NAME.orig`` only if the run wrote a file of the same name). ``--overwrite`` replaces what was there when the run
  started, nothing else.
- **Links kept.** A ``--out`` that is a symbolic link stays a link; the run folder is placed at its target.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import ENVIRONMENT_ERRNOS, EdgekitError

MARKER = ".edgekit-staging"  # inside a staging folder: {"pid": ..., "out": ...}
_FIX_OUT = "choose another --out"


class KeptFilesWarning(UserWarning):
    """Entries the run did not create were found in ``--out`` at the end and were kept."""


def _real(out: Path) -> Path:
    """Where the run folder really goes: the target of a symbolic link, made absolute (the link itself is kept)."""
    out = Path(os.path.abspath(out))
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def _tag(real: Path) -> str:
    """A short name for the folder's helpers (lock, staging), so a 250-character ``--out`` name still fits."""
    return hashlib.sha256(str(real).encode()).hexdigest()[:12]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@contextlib.contextmanager
def _lock(real: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.edgekit-<tag>.lock`` beside ``real``; the lock file records the PID."""
    import fcntl

    path = real.parent / f".edgekit-{_tag(real)}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise EdgekitError(f"output folder is in use by PID {holder} (another edgekit run writes it)", real,
                               "wait for that run to finish, or choose another --out") from None
        with contextlib.suppress(FileNotFoundError):  # the holder before us may have unlinked the file we opened
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _remove_stale(real: Path) -> list[Path]:
    """Staging folders of dead runs on this ``--out`` (their recorded PID is gone). A dead run's swap folder
    (``.old``: killed while placing its results, so it may still hold a user's files) is never removed: one warning
    names it."""
    removed = []
    for folder in real.parent.glob(f".edgekit-{_tag(real)}-*"):
        if not folder.is_dir() or folder.suffix not in (".staging", ".old"):
            continue
        try:
            pid = int(json.loads((folder / MARKER).read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not recorded by edgekit: not ours to remove
        if pid == os.getpid() or pid_alive(pid):
            continue
        if folder.suffix == ".old":
            warnings.warn(f"{folder}: a run killed while placing its results left the previous contents of {real} here; "
                          "move back what you need, then delete it", KeptFilesWarning, stacklevel=2)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _entries(folder: Path, prefix: str = "") -> set[str]:
    """Every path under ``folder`` as ``prefix/rel`` (folders included; ``os.walk`` does not follow links)."""
    out = set()
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        base = "/".join(p for p in (prefix, "" if rel == "." else rel) if p)
        out.update(f"{base}/{n}" if base else n for n in [*dirs, *files])
    return out


@dataclass
class RunFolder:
    """The staging folder of one run and how to place it at ``--out`` when the run succeeds."""

    out: Path
    real: Path
    stage: Path
    replaceable: set[str] = field(default_factory=set)  # entries present at the start that --overwrite replaces

    def commit(self) -> list[str]:
        """Swap the staging folder in; move back what the run did not create and may not replace. Returns the
        entries kept (relative paths)."""
        (self.stage / MARKER).unlink(missing_ok=True)
        if not self.real.exists():
            try:
                os.rename(self.stage, self.real)  # also replaces an empty folder created meanwhile
                return []
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        swap = self.stage.with_suffix(".old")
        swap.mkdir()
        (swap / MARKER).write_text(json.dumps({"pid": os.getpid(), "out": str(self.real)}))
        os.rename(self.real, swap / "out")
        os.rename(self.stage, self.real)
        kept = self._move_back(swap / "out", self.real, "")
        shutil.rmtree(swap, ignore_errors=True)
        if kept:
            shown = ", ".join(kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
            warnings.warn(f"{self.out}: kept {len(kept)} entr{'y' if len(kept) == 1 else 'ies'} this run did not create: {shown}",
                          KeptFilesWarning, stacklevel=2)
        return kept

    def _move_back(self, old: Path, new: Path, rel: str) -> list[str]:
        kept = []
        for entry in sorted(old.iterdir()):
            name = f"{rel}/{entry.name}" if rel else entry.name
            is_dir = entry.is_dir() and not entry.is_symlink()
            dest = new / entry.name
            if name in self.replaceable:
                if not is_dir or not any(e not in self.replaceable for e in _entries(entry, name)):
                    continue  # there at the start, --overwrite given, and nothing new inside it: replaced
            elif not (is_dir and dest.is_dir() and not dest.is_symlink()):
                os.rename(entry, _free(dest))
                kept.append(name)
                continue
            if not (dest.is_dir() and not dest.is_symlink()):
                dest = _free(dest)
                dest.mkdir()
            kept += self._move_back(entry, dest, name)
        return kept


def _free(dest: Path) -> Path:
    """``dest``, or ``dest.orig`` (``.orig.orig``...) when the run wrote something of that name."""
    while dest.exists() or dest.is_symlink():
        dest = dest.with_name(dest.name + ".orig")
    return dest


def _os_error(exc: OSError, where: Path) -> EdgekitError:
    fix = ENVIRONMENT_ERRNOS.get(exc.errno, _FIX_OUT)
    return EdgekitError(f"cannot write the run folder here ({exc.strerror or exc})", exc.filename or where, fix)


@contextlib.contextmanager
def run_folder(out: str | Path, overwrite: bool = False) -> Iterator[RunFolder]:
    """Lock ``out``, clean stale staging of dead runs, and yield a fresh staging folder beside it. The caller writes
    into ``.stage`` and calls ``.commit()``; on any exit without commit the staging folder is removed."""
    out = Path(out)
    if len(out.name.encode()) > 255:
        raise EdgekitError(f"output folder name is {len(out.name.encode())} bytes long (the limit is 255)", out, "choose a shorter --out name")
    real = _real(out)
    if real.exists() and not real.is_dir():
        raise EdgekitError("output path exists and is not a folder", out, "remove the file, or choose another --out")
    if real.is_dir() and any(real.iterdir()) and not overwrite:
        raise EdgekitError("output folder already exists and is not empty", out, "pass --overwrite, or choose another --out")
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a parent is a regular file
        raise EdgekitError("a parent of the output folder is a file, not a folder", exc.filename or real.parent, _FIX_OUT) from None
    except OSError as exc:
        raise _os_error(exc, real.parent) from None
    try:
        with _lock(real):
            _remove_stale(real)
            stage = real.parent / f".edgekit-{_tag(real)}-{os.getpid()}.staging"
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir()
            try:
                (stage / MARKER).write_text(json.dumps({"pid": os.getpid(), "out": str(real)}))
                folder = RunFolder(out, real, stage, _entries(real) if overwrite and real.is_dir() else set())
                yield folder
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.ENAMETOOLONG):
            raise _os_error(exc, real.parent) from None
        raise
