"""attnlab.core.io.writable_folder: a folder path checked before anything is computed for it."""

from __future__ import annotations

import os

import pytest

from attnlab.core.io import file_in_the_way, writable_folder


def test_folders_that_exist_or_can_be_made_pass(tmp_path):
    assert writable_folder(tmp_path) == tmp_path
    assert writable_folder(tmp_path / "a" / "b", "run folder") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # nothing is created
    assert file_in_the_way(tmp_path / "a" / "b") is None


def test_a_file_in_the_way_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    assert file_in_the_way(tmp_path / "f" / "a" / "b") == tmp_path / "f"
    with pytest.raises(ValueError, match=f"^run folder '{tmp_path / 'f'}' is a file, not a folder; remove or rename "
                                         "the file, or choose another path$"):
        writable_folder(tmp_path / "f", "run folder")
    with pytest.raises(ValueError, match=f"^output folder '{tmp_path / 'f' / 'a'}' cannot be created: "
                                         f"'{tmp_path / 'f'}' is a file, not a folder; choose a path under a folder$"):
        writable_folder(tmp_path / "f" / "a", "output folder")


def test_a_folder_this_process_may_not_write_is_a_permission_error(tmp_path, monkeypatch):
    if os.geteuid() == 0:  # root writes anywhere: make the check see what an ordinary user would
        monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(tmp_path / "ro"))
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(PermissionError) as error:
        writable_folder(tmp_path / "ro" / "new")
    assert error.value.filename == str(tmp_path / "ro")
