"""A resume continues only the run its checkpoint recorded: the config and tokenizer are compared with the
checkpoint's fingerprint (not with the editable config.yaml), a difference is refused with the changed keys unless
train.allow_changes names them, tokenizer.json is never replaced by another tokenizer, and --resume --overwrite is
refused."""

from __future__ import annotations

import json

import pytest
import yaml

from attnlab.config import load_config
from attnlab.train import latest_checkpoint, load_run, train
from attnlab.train.optim import lr_at

from trainkit import make_text, run_cli, text_file, tiny_config  # noqa: F401  (text_file is a fixture)


def edit_saved_config(run, section, key, value):
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture
def run(text_file, tmp_path):
    """A finished 4-step run (checkpoints at steps 2 and 4) with lr 3e-3."""
    path = tmp_path / "run"
    train(tiny_config(text_file, path, steps=4, checkpoint_every=2), progress=False)
    return path


def test_an_edited_learning_rate_is_refused_through_the_cli(run):
    edit_saved_config(run, "train", "lr", 0.01)
    done = run_cli("train", run, "--resume", "train.steps=6", "--no-progress")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr == (
        f"attnlab train: error: cannot resume {run}: the config differs from the one checkpoint step-0000004 was "
        "trained with: train.lr 0.003 -> 0.01; undo the change, or keep the new value with "
        f"'train.allow_changes=[train.lr]' (e.g. `attnlab train {run} --resume 'train.allow_changes=[train.lr]'`)\n")
    assert latest_checkpoint(run).step == 4


def test_an_allowed_change_applies_from_the_resumed_step(run, capsys):
    edit_saved_config(run, "train", "lr", 0.01)
    edit_saved_config(run, "train", "weight_decay", 0.0)
    cfg = load_config(run, ["train.steps=6", "train.allow_changes=[train.lr, train.weight_decay]"])
    result = train(cfg, resume=True, progress=False)
    assert result.step == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    t = cfg.train
    assert [r["lr"] for r in rows[4:]] == [lr_at(s, 0.01, t.warmup_steps, 6, t.min_lr_ratio) for s in (4, 5)]
    groups = latest_checkpoint(run).state["optimizer"]["param_groups"]
    assert {g["name"]: g["weight_decay"] for g in groups} == {"decay": 0.0, "no_decay": 0.0}
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert saved["lr"] == 0.01 and saved["allow_changes"] == []  # the allowance was for that resume only
    # the next resume compares with the new value: nothing to allow any more
    assert train(load_config(run, ["train.steps=7"]), resume=True, progress=False).step == 7


@pytest.mark.parametrize("key, value", [("model.dim", 64), ("data.seq_len", 16), ("train.seed", 3)])
def test_keys_that_cannot_change_say_so(run, key, value):
    section, name = key.split(".")
    edit_saved_config(run, section, name, value)
    with pytest.raises(ValueError, match=rf"{key} .* -> {value}; {key} cannot change in a resumed run: undo the "
                                         r"change \(in the command line or .*config.yaml\), or start a new "
                                         r"train.run_dir$"):
        train(load_config(run, ["train.steps=6"]), resume=True, progress=False)


def test_allow_changes_names_only_keys_that_may_change():
    with pytest.raises(ValueError, match="model.dim cannot change when a run resumes"):
        load_config(None, ["train.allow_changes=[model.dim]"])
    with pytest.raises(ValueError, match="'train.lrr' is not a config key; did you mean train.lr"):
        load_config(None, ["train.allow_changes=train.lrr"])
    assert load_config(None, ["train.allow_changes=train.lr"]).train.allow_changes == ["train.lr"]


def test_a_changed_dataset_is_refused_and_the_tokenizer_kept(run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(make_text(seed=1).upper(), encoding="utf-8")  # other characters: another vocabulary
    tokenizer = (run / "tokenizer.json").read_bytes()
    edit_saved_config(run, "data", "dataset", str(other))
    with pytest.raises(ValueError, match=r"data.dataset '.*corpus.txt' -> '.*other.txt'; data.dataset cannot change"):
        train(load_config(run, ["train.steps=6"]), resume=True, progress=False)
    assert (run / "tokenizer.json").read_bytes() == tokenizer
    load_run(run)  # the model and its tokenizer still fit


def test_the_same_path_with_other_text_is_refused_by_the_tokenizer(run, text_file):
    tokenizer = (run / "tokenizer.json").read_bytes()
    text_file.write_text(make_text().upper(), encoding="utf-8")
    with pytest.raises(ValueError, match=r"the tokenizer built from data.dataset='.*corpus.txt' \(data.tokenizer="
                                         r"'char'\) differs from the one checkpoint step-0000004 was trained with"):
        train(load_config(run, ["train.steps=6"]), resume=True, progress=False)
    assert (run / "tokenizer.json").read_bytes() == tokenizer


def test_a_checkpoint_without_fingerprint_is_compared_with_config_yaml(run, capsys):
    ckpt = latest_checkpoint(run)
    state = json.loads((ckpt.path / "state.json").read_text())
    del state["fingerprint"]  # as an older attnlab wrote it
    (ckpt.path / "state.json").write_text(json.dumps(state))
    edit_saved_config(run, "model", "dim", 64)
    cfg = tiny_config(run.parent / "corpus.txt", run, steps=6, checkpoint_every=2)
    with pytest.raises(ValueError, match="model.dim 64 -> 32"):
        train(cfg, resume=True, progress=False)
    edit_saved_config(run, "model", "dim", 32)
    assert train(cfg, resume=True, progress=False).step == 6
    assert f"attnlab: note: checkpoint {ckpt.path} records no config" in capsys.readouterr().err


def test_a_trained_tokenizer_is_reused_not_trained_again(text_file, tmp_path):
    """WordPiece training is not deterministic: a resume must keep the run's tokenizer.json, not train another."""
    run = tmp_path / "run"
    opts = dict(steps=4, checkpoint_every=2, **{"data.tokenizer": "wordpiece", "data.vocab_size": 60})
    train(tiny_config(text_file, run, **opts), progress=False)
    tokenizer = (run / "tokenizer.json").read_bytes()
    assert train(tiny_config(text_file, run, **{**opts, "steps": 6}), resume=True, progress=False).step == 6
    assert (run / "tokenizer.json").read_bytes() == tokenizer
    assert load_run(run).tokenizer.vocab_size <= 60  # data.vocab_size is honoured


def test_resume_and_overwrite_together_are_refused(run):
    with pytest.raises(ValueError, match="--resume and --overwrite cannot be used together"):
        train(load_config(run), resume=True, overwrite=True, progress=False)
    done = run_cli("train", run, "--resume", "--overwrite", "--no-progress")
    assert done.returncode == 2 and done.stderr == (
        f"attnlab train: error: --resume and --overwrite cannot be used together: --resume continues the run in "
        f"{run}, --overwrite deletes it and starts again; pass only one of them\n")
    assert latest_checkpoint(run).step == 4 and len((run / "metrics.jsonl").read_text().splitlines()) == 4
