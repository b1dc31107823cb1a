"""The training loop on tiny runs: learning, bit-exact resume, accumulation, divergence, early stopping, files."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import yaml

from attnlab.config import load_config
from attnlab.train import TrainingDiverged, list_checkpoints, train
from attnlab.train.precision import cpu_has_fast_bf16, resolve_precision

from trainkit import text_file, tiny_config  # noqa: F401  (text_file is a fixture)


def losses(run_dir, key="loss"):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if key in r]


def unigram_entropy(path) -> float:
    counts = Counter(path.read_text(encoding="utf-8"))
    n = sum(counts.values())
    return -sum(c / n * math.log(c / n) for c in counts.values())


def test_loss_falls_and_run_dir_is_complete(text_file, tmp_path):
    run = tmp_path / "run"
    result = train(tiny_config(text_file, run, steps=60, lr=1e-2), progress=False)
    assert result.stopped == "completed" and result.step == 60
    steps = losses(run)
    assert [s for s, _ in steps] == list(range(1, 61))  # one row per optimizer step
    vocab = json.loads((run / "tokenizer.json").read_text())["chars"]
    assert abs(steps[0][1] - math.log(len(vocab))) < 0.3  # starts near the uniform-distribution loss
    val = losses(run, "val_loss")
    assert [s for s, _ in val] == [10, 20, 30, 40, 50, 60]
    # below the unigram entropy (~2.7 nats): the model uses context, not just character frequencies
    assert val[-1][1] < unigram_entropy(text_file) - 0.5, val
    assert result.final_val_loss == pytest.approx(val[-1][1])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 60 and summary["final_val_loss"] == pytest.approx(val[-1][1])
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = load_config(run / "config.yaml")
    assert saved.model.vocab_size == len(vocab) and saved.model.dim == 32 and saved.train.steps == 60
    assert [p.name for p in list_checkpoints(run)] == ["step-0000040", "step-0000060"]  # keep_checkpoints=2


def test_resume_is_bit_exact(text_file, tmp_path):
    """2N steps straight == N steps, Ctrl-C (checkpoint), resume, N more steps: identical losses."""
    opts = dict(steps=12, eval_every=4, checkpoint_every=100, grad_accum=2, **{"model.dropout": 0.1})
    straight = tmp_path / "straight"
    train(tiny_config(text_file, straight, **opts), progress=False)

    def interrupt(step, row):
        if step == 6:
            raise KeyboardInterrupt

    split = tmp_path / "split"
    first = train(tiny_config(text_file, split, **opts), progress=False, on_step=interrupt)
    assert first.stopped == "interrupted" and first.step == 6
    assert [p.name for p in list_checkpoints(split)] == ["step-0000006"]
    second = train(tiny_config(text_file, split, **opts), resume=True, progress=False)
    assert second.stopped == "completed" and second.losses and len(second.losses) == 6
    assert losses(split) == losses(straight)  # exact float equality, every step
    assert losses(split, "val_loss") == losses(straight, "val_loss")


def test_run_saved_with_a_task_section_resumes(text_file, tmp_path):
    """A run directory written before `task` became `objective` (its config.yaml says `task:`) resumes; the
    config is saved again with the new name."""
    run = tmp_path / "run"
    train(tiny_config(text_file, run, steps=4, eval_every=2, checkpoint_every=2), progress=False)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    old = {("task" if k == "objective" else k): v for k, v in raw.items()}
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    cfg = load_config(run, ["train.steps=6"])  # what `attnlab train RUN --resume train.steps=6` does
    result = train(cfg, resume=True, progress=False)
    assert result.stopped == "completed" and result.step == 6 and len(result.losses) == 2
    assert set(yaml.safe_load((run / "config.yaml").read_text())) == {"model", "data", "objective", "train"}


def test_resume_after_metrics_outran_checkpoint(text_file, tmp_path):
    """Rows logged after the last checkpoint are dropped on resume, so each step appears once."""
    opts = dict(steps=10, eval_every=5, checkpoint_every=4)
    straight = tmp_path / "straight"
    train(tiny_config(text_file, straight, **opts), progress=False)
    run = tmp_path / "run"

    def crash(step, row):
        if step == 7:
            raise KeyboardInterrupt

    train(tiny_config(text_file, run, **opts), progress=False, on_step=crash)
    # simulate a hard kill after step 7: the interrupt checkpoint vanished, step 4's is the newest
    import shutil
    shutil.rmtree(run / "checkpoints" / "step-0000007")
    train(tiny_config(text_file, run, **opts), resume=True, progress=False)
    assert losses(run) == losses(straight)


def test_grad_accumulation_matches_big_batch(text_file, tmp_path):
    big = train(tiny_config(text_file, tmp_path / "a", steps=5), progress=False)
    cfg = tiny_config(text_file, tmp_path / "b", steps=5, grad_accum=2)
    cfg.data.batch_size = 4
    acc = train(cfg, progress=False)
    assert acc.losses == pytest.approx(big.losses, abs=1e-5)


def test_nan_loss_is_a_clear_error(text_file, tmp_path):
    cfg = tiny_config(text_file, tmp_path / "run", lr=1e30, warmup_steps=0, grad_clip=None)
    with pytest.raises(TrainingDiverged, match=r"at step 2 .*train\.lr"):
        train(cfg, progress=False)


def test_early_stopping(text_file, tmp_path):
    # lr 1e-30 leaves fp32 weights unchanged, so the validation loss never improves after the first eval
    cfg = tiny_config(text_file, tmp_path / "run", lr=1e-30, eval_every=1, early_stopping_patience=2)
    result = train(cfg, progress=False)
    assert result.stopped == "early_stopping" and result.step == 3


def test_existing_run_needs_resume_or_overwrite(text_file, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(text_file, run, steps=3), progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(text_file, run, steps=3), progress=False)
    result = train(tiny_config(text_file, run, steps=2), overwrite=True, progress=False)
    assert result.step == 2 and len(losses(run)) == 2


def test_resume_rejects_a_changed_config(text_file, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(text_file, run, steps=3), progress=False)
    cfg = tiny_config(text_file, run, steps=6)
    cfg.model.dim = 64
    with pytest.raises(ValueError, match="model.dim"):
        train(cfg, resume=True, progress=False)
    # train.steps may change: training an existing run longer
    assert train(tiny_config(text_file, run, steps=5), resume=True, progress=False).step == 5


def test_resume_without_checkpoint(text_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_config(text_file, tmp_path / "fresh"), resume=True, progress=False)


def test_seq_len_longer_than_model_context(text_file, tmp_path):
    cfg = tiny_config(text_file, tmp_path / "run")
    cfg.data.seq_len = 64
    with pytest.raises(ValueError, match="max_seq_len"):
        train(cfg, progress=False)


def test_precision_resolution():
    import torch

    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))


def test_saved_config_is_plain_yaml(text_file, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(text_file, run, steps=1), progress=False)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    assert set(raw) == {"model", "data", "objective", "train"} and raw["model"]["name"] == "gpt-tiny"
