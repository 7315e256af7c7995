"""What the command line shows: edgekit's own lines on the terminal, third-party chatter in a side log.

TensorFlow/LiteRT, absl, XNNPACK and torchao write banners straight to file descriptor 2 from C++ ("All log
messages before absl::InitializeLog()", "Created TensorFlow Lite XNNPACK delegate", "Failed to load ..._C_mxfp8.so")
and Python libraries log deprecations; a new user reads them as errors. By default the CLI points fd 2 and
``sys.stderr`` at a temporary log and gives edgekit's consoles a duplicate of the real stderr, so only edgekit's
stage lines, progress bars, warnings and errors reach the terminal. The side log is deleted at a clean exit and
kept, with its path printed, when the run crashes. ``--verbose`` turns all of this off.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
from typing import TextIO

from rich.console import Console

# every stderr line edgekit writes goes through this console (stage lines, progress bars, warnings, errors)
console = Console(stderr=True, log_path=False)

_state: dict[str, object] = {}


def terminal_stderr() -> TextIO:
    """The real stderr (the terminal or the caller's pipe), also while third-party output is diverted."""
    return _state.get("real", sys.stderr)  # type: ignore[return-value]


def diverted() -> bool:
    """Whether third-party output goes to the side log (the CLI without --verbose)."""
    return bool(_state) and not _state.get("kept")


def divert_third_party_output() -> None:
    """Send fd 2 and ``sys.stderr`` to a side log; edgekit's console keeps writing to the real stderr."""
    if _state:
        return
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):  # captured in-process (pytest's capsys, an embedding app): leave it
        return
    sys.stderr.flush()
    real = os.fdopen(os.dup(2), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8", errors="replace")
    fd, path = tempfile.mkstemp(prefix="edgekit-native-", suffix=".log")
    os.dup2(fd, 2)
    os.close(fd)
    side = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 -- lives as long as the process
    _state.update(real=real, path=path, side=side, stderr=sys.stderr)
    sys.stderr = side
    console.file = real
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow/LiteRT C++ INFO and WARNING lines
    for name in ("torch", "torchao", "jax", "absl", "tensorflow", "nncf", "openvino", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    atexit.register(_remove_side_log)


def restore_stderr() -> str | None:
    """Undo ``divert_third_party_output`` (before an unexpected traceback is printed); returns the side log's path."""
    if not _state:
        return None
    real, path = _state["real"], _state["path"]
    sys.stderr.flush()
    os.dup2(real.fileno(), 2)  # type: ignore[attr-defined]
    sys.stderr = _state["stderr"]  # type: ignore[assignment]
    console.file = sys.stderr
    _state["kept"] = True
    return str(path)


def _remove_side_log() -> None:
    if _state and not _state.get("kept"):
        try:
            os.unlink(str(_state["path"]))
        except OSError:
            pass
