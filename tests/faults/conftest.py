"""Fixtures of the fault tests: one finished tiny run folder, shared by the tests that only read or copy it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import edgekit

from faults.tiny import tiny_recipe


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny run folder (read-only use: copy it before changing anything)."""
    folder = tmp_path_factory.mktemp("tiny-run")
    recipe = tiny_recipe(folder)
    out = folder / "run"
    result = edgekit("export", recipe, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run folder, free to edit."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))
