"""One writer per run folder: a second `attnlab train` (new, --overwrite, --resume) or `attnlab eval` on a folder that
a live process trains is refused with one line naming that process (exit code 2); a lock left by a killed process is
taken over; what killed writers left is removed when the run starts again.

The lock cases use two real processes: the first trains until the test stops it, and the test waits until the first
process has logged a step (so it holds the folder) before it starts the second one."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from attnlab.cli import main
from attnlab.train import latest_checkpoint, train
from attnlab.train.lock import LOCK_FILE, RunLock, RunLockedError

from trainkit import run_cli, start_training, text_file, tiny_config, wait_for_steps  # noqa: F401  (fixture)

ENDLESS = dict(steps=100_000, eval_every=100_000, checkpoint_every=100_000)


def steps_logged(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def in_use_line(command: str, run, proc, what: str) -> str:
    """The exact line a second writer gets while ``proc`` trains ``run`` (the start time is matched loosely)."""
    return (f"attnlab {command}: error: run folder {str(run)!r} is in use by pid {proc.pid} on {socket.gethostname()} "
            f"since <time> ({what}); wait for it to finish or stop it, or use another run folder (train.run_dir=...)")


def assert_refused(done, expected: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    pattern = re.escape(expected).replace(re.escape("<time>"), r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    assert re.fullmatch(pattern, done.stderr.strip()), (done.stderr, expected)


def stop(proc) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    return out, err


def test_overwrite_train_and_eval_are_refused_while_a_run_trains(text_file, tmp_path, capsys):
    run = tmp_path / "run"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(tiny_config(text_file, run, **ENDLESS).to_yaml())
    first = start_training(cfg_path, "--no-progress")
    try:
        wait_for_steps(first, run / "metrics.jsonl", 2)
        config_before = (run / "config.yaml").read_bytes()
        holder = f"attnlab train {cfg_path} --no-progress"
        overwrite = run_cli("train", cfg_path, "--overwrite", "train.steps=3", "--no-progress")
        assert_refused(overwrite, in_use_line("train", run, first, holder))
        # the same boundary in this process (a second real process too): a plain train, and eval (writes eval.json)
        for argv in (["train", str(cfg_path), "--no-progress"], ["eval", str(run), "--no-progress"]):
            code = main(argv)
            err = capsys.readouterr().err
            assert_refused(subprocess.CompletedProcess(argv, code, "", err), in_use_line(argv[0], run, first, holder))
        assert (run / "config.yaml").read_bytes() == config_before  # nothing of the refused runs was written
        assert not (run / "eval.json").exists()
    finally:
        out, _ = stop(first)
    logged = steps_logged(run)
    assert logged == list(range(1, len(logged) + 1))  # one run's rows, in order, none deleted by --overwrite
    assert latest_checkpoint(run).step == logged[-1] and "resume with: attnlab train" in out
    assert (run / LOCK_FILE).read_bytes() == b""  # a clean exit leaves no holder behind


def test_two_resumes_at_once_do_not_mix_the_metrics(text_file, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(text_file, run, steps=4, checkpoint_every=2), progress=False)
    first = start_training(run, "--resume", "train.steps=100000", "train.checkpoint_every=100000", "--no-progress")
    try:
        wait_for_steps(first, run / "metrics.jsonl", 6)
        second = run_cli("train", run, "--resume", "train.steps=6", "--no-progress")
        holder = f"attnlab train {run} --resume train.steps=100000 train.checkpoint_every=100000 --no-progress"
        assert_refused(second, in_use_line("train", run, first, holder))
    finally:
        stop(first)
    logged = steps_logged(run)
    assert logged == list(range(1, len(logged) + 1)) and logged[-1] == latest_checkpoint(run).step > 6


def test_a_lock_left_by_a_killed_process_is_taken_over(text_file, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny_config(text_file, run, **ENDLESS)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(cfg.to_yaml())
    first = start_training(cfg_path, "--no-progress")
    wait_for_steps(first, run / "metrics.jsonl", 1)
    first.kill()  # SIGKILL: no cleanup runs; the operating system drops the lock
    first.communicate(timeout=60)
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == first.pid  # its record is still there
    result = train(tiny_config(text_file, run, steps=2), overwrite=True, progress=False)
    assert result.step == 2
    err = capsys.readouterr().err
    assert re.search(rf"attnlab: run folder {re.escape(repr(str(run)))} was left locked by pid {first.pid} on "
                     rf"{re.escape(socket.gethostname())} since [\d: -]+ \(attnlab train {re.escape(str(cfg_path))} "
                     r"--no-progress\), which is gone; taking it over\n", err), err


def test_unfinished_writes_are_removed_when_the_run_starts_again(text_file, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_config(text_file, run, steps=4, checkpoint_every=2), progress=False)
    # what a kill in the middle of a checkpoint write and of an atomic file write leaves behind
    tmp_ckpt = run / "checkpoints" / ".tmp-step-0000006-4242"
    tmp_ckpt.mkdir()
    (tmp_ckpt / "model.safetensors").write_bytes(b"half")
    tmp_file = run / ".metrics.jsonl.k3j2h1g0.tmp.jsonl"
    tmp_file.write_text("half")
    capsys.readouterr()
    train(tiny_config(text_file, run, steps=6, checkpoint_every=2), resume=True, progress=False)
    assert not tmp_ckpt.exists() and not tmp_file.exists()
    err = capsys.readouterr().err
    assert f"attnlab: removed {tmp_ckpt}, left by an interrupted write\n" in err
    assert f"attnlab: removed {tmp_file}, left by an interrupted write\n" in err
    assert latest_checkpoint(run).step == 6


def test_run_lock_in_one_process(tmp_path):
    run = tmp_path / "new" / "run"
    with RunLock(run) as lock:
        assert lock.held and run.is_dir()
        record = json.loads((run / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(RunLockedError, match=rf"is in use by pid {os.getpid()} on ") as err:
            RunLock(run).acquire()  # another open file: the lock is per file description, even in one process
        assert isinstance(err.value, FileExistsError) and err.value.filename is None
    assert not lock.held and (run / LOCK_FILE).read_text() == ""
    RunLock(run).acquire().release()  # free again
    lock.release()  # twice is a no-op


def test_under_torchrun_a_locked_folder_stops_every_rank(text_file, tmp_path):
    """Only rank 0 takes the lock; when it cannot, the other rank stops too instead of waiting forever."""
    run = tmp_path / "run"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(tiny_config(text_file, run, steps=2).to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "attnlab.cli", "train", str(cfg_path), "--no-progress"]
    with RunLock(run):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count(f"error: run folder {str(run)!r} is in use by pid {os.getpid()}") == 1, proc.stderr
    assert "could not lock the run folder" in proc.stderr  # rank 1's line
    assert not (run / "metrics.jsonl").exists()
