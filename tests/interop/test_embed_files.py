"""``attnlab embed`` with bad files: one line naming the file and the fix, exit code 2; its output follows the
user's umask."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from attnlab.cli import main

pytest.importorskip("transformers")


def _embed(*argv):
    return subprocess.run([sys.executable, "-m", "attnlab.cli", "embed", *map(str, argv)], capture_output=True,
                          text=True, timeout=300)


def test_empty_model_safetensors_is_one_line(hf_checkpoint, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(hf_checkpoint("BertModel")[0] / "config.json", model)
    (model / "model.safetensors").write_bytes(b"")
    (tmp_path / "in.txt").write_text("a b\n", encoding="utf-8")
    proc = _embed("--model", model, "--input", tmp_path / "in.txt", "--output", tmp_path / "out.npy", "--no-progress")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"attnlab embed: error: {model / 'model.safetensors'} is not a readable "
                                  "safetensors file (")
    assert proc.stderr.endswith("it is truncated or corrupt: copy or export it again\n")


def test_input_that_is_not_utf8_names_the_file_and_the_byte(tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes("caf\u00e9\n".encode("latin-1"))
    proc = _embed("--input", src, "--output", tmp_path / "out.npy")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr == (f"attnlab embed: error: input file '{src}' is not UTF-8 text: byte b'\\xe9' at position 3 "
                           f"(invalid continuation byte); convert it, e.g. `iconv -f LATIN1 -t UTF-8 {src} > "
                           "latin1.utf8.txt`\n")


@pytest.mark.parametrize("case, message", [
    ("input_folder", "input '{tmp}' is a folder; give a UTF-8 text file with one sentence per line"),
    ("output_folder", "output '{tmp}/out.npy' is a folder; give a file name ending in .npy"),
    ("output_under_file", "output folder '{tmp}/afile' is a file, not a folder; remove or rename the file, or "
                          "choose another path"),
])
def test_paths_are_checked_before_any_work(tmp_path, capsys, case, message):
    (tmp_path / "in.txt").write_text("a\n", encoding="utf-8")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "out.npy").mkdir()
    src = tmp_path if case == "input_folder" else tmp_path / "in.txt"
    dst = {"output_folder": tmp_path / "out.npy", "output_under_file": tmp_path / "afile" / "e.npy"}.get(
        case, tmp_path / "e.npy")
    # the model folder does not exist: a path error must come first, before anything loads
    assert main(["embed", "--model", str(tmp_path / "nowhere"), "--input", str(src), "--output", str(dst)]) == 2
    assert capsys.readouterr().err == f"attnlab embed: error: {message.format(tmp=tmp_path)}\n"


def test_embeddings_file_follows_the_umask(hf_checkpoint, tmp_path, capsys):
    from test_packing import _toy_tokenizer

    model = tmp_path / "model"
    shutil.copytree(hf_checkpoint("BertModel")[0], model)
    (model / "tokenizer.json").write_text(_toy_tokenizer().tokenizer.to_str())
    (tmp_path / "in.txt").write_text("a b\nc\n", encoding="utf-8")
    old = os.umask(0o027)
    try:
        assert main(["embed", "--model", str(model), "--input", str(tmp_path / "in.txt"), "--output",
                     str(tmp_path / "e.npy"), "--no-progress"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "e.npy").stat().st_mode) == 0o640
    assert np.load(tmp_path / "e.npy").shape == (2, 32) and "wrote 2 x 32" in capsys.readouterr().out
