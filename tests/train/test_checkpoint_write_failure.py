"""A checkpoint that cannot be written (read-only folder, full disk) stops the run with one line saying where and
why; the previous checkpoint stays intact and loadable, and the run resumes from it."""

from __future__ import annotations

import errno
import resource
import signal

import pytest
import torch

from attnlab.models import create_model
from attnlab.train import latest_checkpoint, list_checkpoints, train
from attnlab.train.checkpoint import CheckpointWriteError, load_weights

from trainkit import run_cli, text_file, tiny_config  # noqa: F401  (text_file is a fixture)


@pytest.fixture
def run(text_file, tmp_path):
    path = tmp_path / "run"
    train(tiny_config(text_file, path, steps=4, checkpoint_every=2), progress=False)
    return path


def assert_intact(run, step):
    ckpt = latest_checkpoint(run)  # verified: sizes and hashes
    assert ckpt.step == step and [p.name for p in list_checkpoints(run)] == [f"step-{step - 2:07d}", f"step-{step:07d}"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary left
    model = create_model("gpt-tiny", vocab_size=ckpt.state["fingerprint"]["config"]["model"]["vocab_size"], dim=32,
                         num_layers=2, num_heads=2, max_seq_len=32)
    load_weights(model, ckpt)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("number, text, fix", [
    (errno.ENOSPC, "No space left on device", "free some space"),
    (errno.EACCES, "Permission denied", "make the run folder writable"),
    (errno.EROFS, "Read-only file system", "make the file system writable"),
])
def test_a_failed_write_is_one_line_and_keeps_the_previous_checkpoint(run, text_file, monkeypatch, number, text, fix):
    import attnlab.train.checkpoint as C

    def refuse(tensors, path, *args, **kwargs):
        raise OSError(number, text, str(path))

    monkeypatch.setattr(C, "save_file", refuse)
    with pytest.raises(CheckpointWriteError) as err:
        train(tiny_config(text_file, run, steps=8, checkpoint_every=2), resume=True, progress=False)
    message = str(err.value)
    assert err.value.errno == number and isinstance(err.value, OSError) and "\n" not in message
    assert message.startswith(f"cannot write checkpoint {run / 'checkpoints' / 'step-0000006'} ({text}: '{run}/"
                              "checkpoints/.tmp-step-0000006-")
    assert message.endswith(f"); training stopped at step 6 and the newest intact checkpoint is "
                            f"{run / 'checkpoints' / 'step-0000004'}: {fix}, then continue with `attnlab train {run} "
                            "--resume`")
    assert_intact(run, 4)
    monkeypatch.undo()
    assert train(tiny_config(text_file, run, steps=8, checkpoint_every=2), resume=True, progress=False).step == 8


def test_a_full_disk_through_the_cli(run):
    """A real failed write: a file size limit makes the weights file too large to write (as a full disk would)."""

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the error instead of being killed by the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # the weights need ~110 kB; the logs fit

    done = run_cli("train", run, "--resume", "train.steps=8", "--no-progress", preexec_fn=small_files)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr == (
        f"attnlab train: error: cannot write checkpoint {run / 'checkpoints' / 'step-0000006'} (Error while serializing: "
        "I/O error: File too large (os error 27)); training stopped at step 6 and the newest intact checkpoint is "
        f"{run / 'checkpoints' / 'step-0000004'}: free some space or raise the file size limit, then continue with "
        f"`attnlab train {run} --resume`\n")
    assert_intact(run, 4)
