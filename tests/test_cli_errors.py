"""File and folder errors at the command line's boundary: one line naming the path and the fix, exit code 2 for a
bad path (1 when the file system refuses), no traceback unless ATTNLAB_DEBUG=1."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import yaml

from attnlab.cli import main
from attnlab.cli.errors import describe_error

TEXT = "And God said, Let there be light: and there was light.\n" * 60


def _cli(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "attnlab.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture
def tiny(tmp_path):
    """A recipe of a few steps of a one-layer char GPT on a small text."""
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    recipe = {"model": {"name": "gpt-tiny", "dim": 16, "num_layers": 1, "num_heads": 2, "max_seq_len": 16},
              "data": {"dataset": str(tmp_path / "text.txt"), "batch_size": 4, "seq_len": 16},
              "train": {"steps": 2, "warmup_steps": 1, "eval_every": 2, "eval_batches": 1, "precision": "fp32",
                        "run_dir": str(tmp_path / "run")}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path / "tiny.yaml"


def test_run_folder_under_a_file_names_the_file(tiny, tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = _cli("train", tiny, f"train.run_dir={tmp_path / 'afile' / 'run'}", "--no-progress")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"attnlab train: error: cannot use '{tmp_path / 'afile' / 'run'}': '{tmp_path / 'afile'}' is a file, not a "
        "folder; choose a path under a folder, or move the file")
    assert proc.stderr.count("\n") == 1


def test_run_folder_that_is_a_file_and_debug_traceback(tiny, tmp_path):
    (tmp_path / "afile").write_text("x")
    argv = ("train", tiny, f"train.run_dir={tmp_path / 'afile'}", "--no-progress")
    proc = _cli(*argv)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr == (f"attnlab train: error: '{tmp_path / 'afile'}' is a file where a folder is needed; "
                           "remove or rename the file, or choose another path\n")
    debug = _cli(*argv, env={"ATTNLAB_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileExistsError" in debug.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any folder: the monkeypatched test below covers it")
def test_unwritable_run_folder_is_one_line(tiny, tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    proc = _cli("train", tiny, f"train.run_dir={tmp_path / 'ro' / 'run'}", "--no-progress")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"permission denied for '{tmp_path / 'ro' / 'run'}'" in proc.stderr


def test_permission_denied_is_one_line_with_exit_1(tiny, tmp_path, monkeypatch, capsys):
    import attnlab.train.trainer

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro" / "run"))

    monkeypatch.setattr(attnlab.train.trainer, "train", refuse)
    assert main(["train", str(tiny), "--no-progress"]) == 1
    assert capsys.readouterr().err == (
        f"attnlab train: error: permission denied for '{tmp_path / 'ro' / 'run'}'; check its permissions and its "
        "folder's (`ls -ld`), or choose another path\n")


@pytest.mark.parametrize("error, code, message", [
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/d"), 2, "'/d' is a folder where a file is needed; give "
                                                                 "the path of a file"),
    (FileNotFoundError(errno.ENOENT, "No such file", "/x/y"), 2, "'/x/y' does not exist; check the path"),
    (FileNotFoundError("/r is not a run directory"), 2, "/r is not a run directory"),
    (OSError(errno.EROFS, "Read-only file system", "/m/run"), 1, "'/m/run' is on a read-only file system; choose a "
                                                                 "writable path"),
    (OSError(errno.ENOSPC, "No space left", "/m/f"), 1, "no space left on the device holding '/m/f'; free some "
                                                        "space or choose another path"),
    (ValueError("first\n  second"), 2, "first second"),
    (TypeError("token ids must be integers"), 2, "token ids must be integers"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"), 1, "Invalid cross-device link: '/a' -> "
                                                                             "'/b'"),
    (RuntimeError("a bug"), None, ""),
])
def test_describe_error(error, code, message):
    assert describe_error(error) == (code, message)


def test_unicode_and_safetensors_errors_without_a_path_are_still_one_line():
    code, message = describe_error(_decode_error())
    assert code == 2 and message == "a file is not UTF-8 text (byte b'\\xff' at position 0: invalid start byte); " \
                                    "convert it to UTF-8"
    from safetensors import SafetensorError

    assert describe_error(SafetensorError("header too small")) == (
        2, "a safetensors file is truncated or corrupt (header too small); write or copy it again")


def _decode_error() -> UnicodeDecodeError:
    try:
        b"\xffa".decode("utf-8")
    except UnicodeDecodeError as e:
        return e
    raise AssertionError("decoding should fail")


def test_eval_on_a_read_only_run_folder_still_prints_the_loss(tiny, tmp_path, monkeypatch, capsys):
    import attnlab.train.run

    assert main(["train", str(tiny), "--no-progress"]) == 0
    capsys.readouterr()

    def read_only(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(attnlab.train.run, "write_json", read_only)
    code = main(["eval", str(tmp_path / "run"), "--no-progress"])
    captured = capsys.readouterr()
    assert "val loss" in captured.out and "eval.json" in captured.err and code == 0
