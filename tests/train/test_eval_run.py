"""evaluate_run writes eval.json under the run's lock; a folder it cannot write still gives the result (and one line
on stderr); save=False neither writes nor locks; a trained tokenizer is read from the run, not trained again."""

from __future__ import annotations

import errno
import json

import pytest

from attnlab.train import evaluate_run, train
from attnlab.train.lock import RunLock, RunLockedError

from trainkit import text_file, tiny_config  # noqa: F401  (text_file is a fixture)


@pytest.fixture
def run(text_file, tmp_path):
    path = tmp_path / "run"
    train(tiny_config(text_file, path, steps=2), progress=False)
    return path


def test_writes_eval_json_and_refuses_a_folder_in_use(run):
    result = evaluate_run(run, progress=False)
    assert json.loads((run / "eval.json").read_text()) == result and result["step"] == 2
    (run / "eval.json").unlink()
    with RunLock(run):
        with pytest.raises(RunLockedError, match="is in use by pid"):
            evaluate_run(run, progress=False)
        assert evaluate_run(run, progress=False, save=False) == result  # reads only: no lock needed
    with pytest.raises(ValueError, match="trains a language model.*leave out --tta"):
        evaluate_run(run, max_batches=2, progress=False, save=False, tta="flip")
    assert not (run / "eval.json").exists()


def test_a_partial_or_training_split_evaluation_goes_beside_the_full_one(run):
    """--max-batches and --split train write files of their own: the whole validation score stays in eval.json."""
    full = evaluate_run(run, progress=False)
    partial = evaluate_run(run, max_batches=1, progress=False)
    trained = evaluate_run(run, split="train", progress=False)
    assert json.loads((run / "eval.json").read_text()) == full
    assert json.loads((run / "eval-first1.json").read_text()) == partial and partial["max_batches"] == 1
    assert json.loads((run / "eval-train.json").read_text()) == trained and trained["split"] == "train"
    assert partial["tokens"] < full["tokens"] < trained["tokens"]


def test_overwrite_clears_every_evaluation_file(run, text_file):
    evaluate_run(run, progress=False)
    evaluate_run(run, max_batches=1, progress=False)
    (run / "confusion_matrix-train.png").write_bytes(b"stale")
    train(tiny_config(text_file, run, steps=2), overwrite=True, progress=False)
    assert not list(run.glob("eval*.json")) and not list(run.glob("confusion_matrix*.png"))


def test_a_registered_name_stays_a_name_beside_a_file_of_that_name(tmp_path, monkeypatch):
    from attnlab.train.fingerprint import absolute_data_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "kjv").write_text("not the bible")
    (tmp_path / "mine.txt").write_text("my text")
    assert absolute_data_paths({"data": {"dataset": "kjv"}})["data"]["dataset"] == "kjv"
    assert absolute_data_paths({"data": {"dataset": "mine.txt"}})["data"]["dataset"] == str(tmp_path / "mine.txt")


@pytest.mark.parametrize("where", ["lock", "eval.json"])
def test_a_folder_that_cannot_be_written_still_gives_the_result(run, monkeypatch, capsys, where):
    import attnlab.train.run as R

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(run / "eval.json"))

    if where == "lock":
        monkeypatch.setattr(R.RunLock, "acquire", lambda self: refuse(self.path))
    else:
        monkeypatch.setattr(R, "write_json", refuse)
    result = evaluate_run(run, progress=False)
    assert result["loss"] > 0 and not (run / "eval.json").exists()
    assert capsys.readouterr().err == (f"attnlab: cannot write {run / 'eval.json'} (Permission denied: "
                                       f"'{run / 'eval.json'}'); the result is not saved\n")


def test_a_trained_tokenizer_is_read_from_the_run(text_file, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(text_file, run, steps=2, **{"data.tokenizer": "wordpiece", "data.vocab_size": 60}),
          progress=False)
    first = evaluate_run(run, max_batches=3, progress=False)
    assert evaluate_run(run, max_batches=3, progress=False) == first  # the same ids every time, none unknown
