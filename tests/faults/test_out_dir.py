"""``--out`` under faults, for real: signals to a real child process, a real second run for the lock, files a user
drops in while a run goes, symbolic links, over-long names, a parent that is a file, a read-only and a full file
system (real tmpfs mounts; root only)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, edgekit

from faults.tiny import assert_one_line_error, tiny_recipe


def start_export(recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, EDGEKIT_PROGRESS="0", COLUMNS="200")
    return subprocess.Popen([sys.executable, "-m", "edgekit.cli", "export", str(recipe), "--out", str(out), *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def staging(parent: Path) -> list[Path]:
    return sorted(parent.glob(".edgekit-*.staging"))


def wait_for_staged(parent: Path, name: str = "model_fp32_raw.onnx", timeout: float = 120) -> Path:
    """The staging folder of the running export, once ``name`` was written into it (the run is mid-way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for folder in staging(parent):
            if (folder / name).is_file():
                return folder
        time.sleep(0.05)
    raise AssertionError(f"no staging folder with {name} in {parent} after {timeout} s")


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def only(parent: Path) -> list[str]:
    """What is in ``parent``, hidden helpers included."""
    return sorted(p.name for p in parent.iterdir())


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_run_exits_cleanly_and_leaves_nothing(tmp_path, sig, code):
    recipe = tiny_recipe(tmp_path)
    proc = start_export(recipe, tmp_path / "out")
    wait_for_staged(tmp_path)
    proc.send_signal(sig)
    result = finish(proc)
    assert_one_line_error(result, "interrupted", signal.Signals(sig).name, "--out is unchanged", code=code)
    assert only(tmp_path) == ["tiny.yaml"]  # no staging folder, no lock file, no --out


def test_staging_of_a_killed_run_is_removed_by_the_next_run(tmp_path):
    recipe = tiny_recipe(tmp_path)
    proc = start_export(recipe, tmp_path / "out")
    stale = wait_for_staged(tmp_path)
    proc.kill()
    finish(proc)
    assert stale.is_dir() and json.loads((stale / ".edgekit-staging").read_text())["pid"] == proc.pid
    other = tmp_path / ".edgekit-000000000000-1.staging"  # an unrelated folder of the same shape: not ours to remove
    other.mkdir()
    result = edgekit("export", recipe, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not stale.exists()
    assert only(tmp_path) == [other.name, "out", "tiny.yaml"]


def test_a_second_run_on_the_same_out_is_refused_and_the_first_finishes(tmp_path):
    recipe = tiny_recipe(tmp_path)
    first = start_export(recipe, tmp_path / "out")
    wait_for_staged(tmp_path)
    second = edgekit("export", recipe, "--out", tmp_path / "out")
    assert_one_line_error(second, "in use by PID", str(first.pid))
    done = finish(first)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["recipe"]["name"] == "tiny"
    assert only(tmp_path) == ["out", "tiny.yaml"]


def test_files_a_user_puts_into_out_during_the_run_are_kept(tmp_path):
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "out"
    proc = start_export(recipe, out)
    wait_for_staged(tmp_path)
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "mine.txt").write_text("my notes")
    (out / "report.md").write_text("my own report.md")  # the run writes one too: the user's is kept beside it
    result = finish(proc)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "notes" / "mine.txt").read_text() == "my notes"
    assert (out / "report.md.orig").read_text() == "my own report.md"
    assert (out / "report.md").read_text().startswith("#") and (out / "report.json").is_file()
    assert "kept 2 entries this run did not create" in result.stderr
    assert only(tmp_path) == ["out", "tiny.yaml"]


def test_overwrite_replaces_what_was_there_and_keeps_what_arrived_later(tiny_run, tmp_path):
    recipe = tiny_recipe(tmp_path)
    out = Path(shutil.copytree(tiny_run, tmp_path / "out"))
    (out / "old-extra.txt").write_text("there before the run")
    before = json.loads((out / "report.json").read_text())["created_utc"]
    time.sleep(1.1)
    proc = start_export(recipe, out, "--overwrite")
    wait_for_staged(tmp_path)
    (out / "arrived.txt").write_text("added while the run went")
    result = finish(proc)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "report.json").read_text())["created_utc"] != before
    assert (out / "arrived.txt").read_text() == "added while the run went"
    assert not (out / "old-extra.txt").exists()  # present at the start: --overwrite replaced it, as asked
    assert only(tmp_path) == ["out", "tiny.yaml"]


def test_out_that_is_a_symbolic_link_stays_a_link(tmp_path):
    recipe = tiny_recipe(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    result = edgekit("export", recipe, "--out", tmp_path / "link")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "report.json").is_file()
    assert only(tmp_path) == ["link", "real", "tiny.yaml"]


def test_a_250_character_out_name_works_and_a_300_character_one_is_one_line(tmp_path):
    recipe = tiny_recipe(tmp_path)
    long = tmp_path / ("r" * 250)
    result = edgekit("export", recipe, "--out", long)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (long / "report.json").is_file()
    assert_one_line_error(edgekit("export", recipe, "--out", tmp_path / ("x" * 300)), "255", "shorter")
    assert only(tmp_path) == ["r" * 250, "tiny.yaml"]


def test_a_parent_that_is_a_file_is_one_line(tmp_path):
    recipe = tiny_recipe(tmp_path)
    (tmp_path / "afile").write_text("user data")
    assert_one_line_error(edgekit("export", recipe, "--out", tmp_path / "afile" / "out"), "afile", "is a file")
    assert_one_line_error(edgekit("export", recipe, "--out", tmp_path / "afile"), "afile", "not a folder")
    assert (tmp_path / "afile").read_text() == "user data"


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a real tmpfs: ``mount(size, read_only=False) -> folder``; unmounted at the end."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs mounts are Linux")
def test_read_only_parent_is_one_line(tmp_path, tmpfs):
    recipe = tiny_recipe(tmp_path)
    fs = tmpfs("1m", read_only=True)
    assert_one_line_error(edgekit("export", recipe, "--out", fs / "out"), str(fs), "read-only")
    assert_one_line_error(edgekit("export", recipe, "--out", fs / "deeper" / "out"), str(fs), "read-only")


@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs mounts are Linux")
@pytest.mark.parametrize("size", ["6m", "12m"])  # full before the first model is written; full after the first ones
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, tmpfs, size):
    recipe = tiny_recipe(tmp_path)
    fs = tmpfs(size)
    result = edgekit("export", recipe, "--out", fs / "out")
    assert_one_line_error(result, "No space left on device", str(fs / "out"), "free space")
    assert only(fs) == []
    assert shutil.disk_usage(fs).used == 0


def test_a_dead_runs_swap_folder_is_kept_and_named(tmp_path):
    """A run killed between its two final renames leaves the previous ``--out`` in its swap folder: the next run
    removes the dead run's staging folder but keeps the swap folder (it may hold a user's files) and names it."""
    from edgekit.outdir import MARKER, _tag

    recipe = tiny_recipe(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    real = tmp_path / "out"
    folders = {}
    for suffix in (".staging", ".old"):
        folders[suffix] = tmp_path / f".edgekit-{_tag(real)}-{dead.pid}{suffix}"
        folders[suffix].mkdir()
        (folders[suffix] / MARKER).write_text(json.dumps({"pid": dead.pid, "out": str(real)}))
    (folders[".old"] / "out").mkdir()
    (folders[".old"] / "out" / "mine.txt").write_text("user data")
    result = edgekit("export", recipe, "--out", real)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not folders[".staging"].exists()
    assert (folders[".old"] / "out" / "mine.txt").read_text() == "user data"
    assert f"{folders['.old']}: a run killed while placing its results" in result.stderr
