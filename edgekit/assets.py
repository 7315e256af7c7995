"""Where the shared real assets live: one setting, ``EDGEKIT_ASSETS`` (default ``../shared/assets``)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "EDGEKIT_ASSETS"
_REPO_ROOT = Path(__file__).resolve().parents[1]


def assets_dir() -> Path:
    """Return the assets folder: ``$EDGEKIT_ASSETS``, else ``../shared/assets`` from the CWD or the checkout."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    for base in (Path.cwd(), _REPO_ROOT):
        candidate = (base / ".." / "shared" / "assets").resolve()
        if candidate.is_dir():
            return candidate
    return (Path.cwd() / ".." / "shared" / "assets").resolve()


def expand(text: str) -> str:
    """Expand ``${EDGEKIT_ASSETS}`` (and other environment variables) in a recipe string."""
    if "${EDGEKIT_ASSETS}" in text or "$EDGEKIT_ASSETS" in text:
        text = text.replace("${EDGEKIT_ASSETS}", str(assets_dir())).replace("$EDGEKIT_ASSETS", str(assets_dir()))
    return os.path.expandvars(os.path.expanduser(text))
