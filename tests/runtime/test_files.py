"""runtime.files.write_atomic: old or new content, never a mixture; nothing left behind."""

import mmap
import os

import pytest

from runtime.files import write_atomic


def test_creates_and_replaces_with_open_permissions(tmp_path):
    path = tmp_path / "a.bin"
    write_atomic(path, b"one")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"")
    assert path.read_bytes() == b"one"
    assert path.stat().st_mode == plain.stat().st_mode        # as open(path, "wb") would create it
    write_atomic(path, b"two, longer")
    assert path.read_bytes() == b"two, longer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "plain.bin"]


def test_a_mapped_reader_keeps_the_old_bytes(tmp_path):
    path = tmp_path / "w.safetensors"
    write_atomic(path, b"x" * 4096)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        write_atomic(path, b"")                                  # replaced by an empty file
        assert m[:] == b"x" * 4096                                # the old inode's pages are intact
    assert path.read_bytes() == b""


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    write_atomic(path, b"{}")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, b'{"new": 1}')
    assert path.read_bytes() == b"{}"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_missing_folder_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nope" / "a.bin", b"1")
