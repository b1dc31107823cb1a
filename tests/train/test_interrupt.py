"""Ctrl-C (SIGINT) on `attnlab train`: finish the step, save a checkpoint, exit cleanly; then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from attnlab.train import latest_checkpoint, train

from trainkit import text_file, tiny_config  # noqa: F401  (text_file is a fixture)


def test_sigint_saves_and_resume_finishes(text_file, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(text_file, run, steps=100_000, eval_every=100_000, checkpoint_every=100_000)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(cfg.to_yaml())
    proc = subprocess.Popen([sys.executable, "-m", "attnlab.cli", "train", str(cfg_path), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = run / "metrics.jsonl"
    # synchronise on the run's own output: interrupt once 3 steps are logged (the process must still be training)
    for _ in range(600):  # polls, at most ~2 minutes
        if proc.poll() is not None or (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training exited before it was interrupted: " + "".join(proc.communicate())
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, err
    assert "resume with: attnlab train" in out
    ckpt = latest_checkpoint(run)  # verified: complete and intact
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert ckpt.step == logged[-1] >= 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] == "interrupted" and summary["step"] == ckpt.step

    more = tiny_config(text_file, run, steps=ckpt.step + 2, eval_every=100_000, checkpoint_every=100_000)
    result = train(more, resume=True, progress=False)
    assert result.step == ckpt.step + 2 and len(result.losses) == 2
