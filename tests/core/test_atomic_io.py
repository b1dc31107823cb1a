"""attnlab.core.io: atomic writers keep the old file on failure, leave no temporary files, honour the umask."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from attnlab.core.io import copy_file, default_file_mode, write_bytes, write_json, write_text, write_with


def test_writers_create_parents_and_replace(tmp_path):
    path = tmp_path / "a" / "b" / "f.txt"
    assert write_text(path, "héllo") == path and path.read_text(encoding="utf-8") == "héllo"
    write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    write_json(tmp_path / "x.json", {"b": 1, "a": [1, 2]}, sort_keys=True)
    text = (tmp_path / "x.json").read_text()
    assert json.loads(text) == {"a": [1, 2], "b": 1} and text.endswith("}\n") and text.index('"a"') < text.index('"b"')
    copy_file(path, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]  # no temporary file left


def test_write_with_keeps_the_target_suffix_for_numpy(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = write_with(tmp_path / "emb.npy", lambda tmp: np.save(tmp, arr))
    assert np.array_equal(np.load(out), arr) and sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "keep.txt"
    write_text(path, "old")

    def boom(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_with(path, boom)
    with pytest.raises(TypeError):
        write_json(path, {"x": object()})
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        assert default_file_mode() == 0o640
        path = write_text(tmp_path / "m.txt", "x")
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
