"""clean_ros/atomic.py: an output is either the old file or the complete new one, never half of it, and no
temporary file is left behind."""
from __future__ import annotations

import json
import os
import stat

import pytest

from clean_ros.atomic import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_atomic_open_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_open(path, "wb") as handle:
        handle.write(b"new ")
        handle.write(b"content")
        assert path.read_bytes() == b"old"  # nothing visible under the name until the block ends
        assert handle.name != str(path) and os.path.dirname(handle.name) == str(tmp_path)
    assert path.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_open_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="writer broke"):
        with atomic_open(path, "w") as handle:
            handle.write("half of the new")
            raise RuntimeError("writer broke")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_open_failure_without_an_old_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(tmp_path / "new.csv", "w", newline="") as handle:
            handle.write("a,b\r\n")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_open_works_with_file_object_writers(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "state.pt"
    with atomic_open(path, "wb", fsync=True) as handle:
        torch.save({"w": torch.arange(3)}, handle)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_atomic_open_refuses_modes_that_do_not_write_a_new_file(tmp_path):
    for mode in ("r", "rb", "a"):
        with pytest.raises(ValueError, match="does not write a new file"):
            with atomic_open(tmp_path / "x", mode):
                pass
    assert list(tmp_path.iterdir()) == []


def test_written_files_keep_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp would have made it 0600
    assert path.read_bytes() == b"\x00\x01"


def test_text_and_json_writers(tmp_path):
    assert atomic_write_text(tmp_path / "t.txt", "héllo\n").read_text() == "héllo\n"
    assert json.loads(atomic_write_json(tmp_path / "d.json", {"a": [1, 2]}).read_text()) == {"a": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "t.txt"]
