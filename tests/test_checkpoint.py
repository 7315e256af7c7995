"""Checkpoint reading: safetensors and Ultralytics .pt agree; pickle code is never executed; bad files fail clearly."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch
from conftest import WEIGHTS_PT, WEIGHTS_ST

from edgekit.errors import EdgekitError
from edgekit.models.yolo.checkpoint import load_checkpoint


def test_pt_and_safetensors_hold_the_same_weights():
    pt, st = load_checkpoint(WEIGHTS_PT), load_checkpoint(WEIGHTS_ST)
    assert set(pt.state_dict) == set(st.state_dict)
    assert len(st.state_dict) == 349
    for key, tensor in st.state_dict.items():
        assert torch.equal(pt.state_dict[key], tensor), key
    assert pt.architecture == st.architecture
    assert pt.names == st.names and len(pt.names) == 80 and pt.names[0] == "person"


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_pt(path, payload) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))


def test_pickle_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    _write_pt(evil, {"model": _Exploit(str(marker))})
    with pytest.raises(EdgekitError) as info:
        load_checkpoint(evil)
    assert not marker.exists(), "the restricted unpickler executed code from the checkpoint"
    assert str(evil) in str(info.value)
    # The same payload *would* run code with plain pickle: the test is meaningful.
    with zipfile.ZipFile(evil) as archive:
        pickle.loads(archive.read("archive/data.pkl"))
    assert marker.exists()


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(WEIGHTS_ST.read_bytes()[: 100_000])
    with pytest.raises(EdgekitError, match="truncated.safetensors.*corrupt or truncated"):
        load_checkpoint(bad)


def test_corrupt_pt_and_missing_file(tmp_path):
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(EdgekitError, match="junk.pt"):
        load_checkpoint(bad)
    with pytest.raises(EdgekitError, match="not found"):
        load_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(EdgekitError, match="unsupported weights format"):
        load_checkpoint(WEIGHTS_ST.with_suffix(".md").parent / "LICENSE.ultralytics-yolov5.AGPL-3.0.txt")
