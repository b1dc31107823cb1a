"""DDP under torchrun (gloo, 2 CPU processes) matches one process with the doubled batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from attnlab.train import train

from trainkit import text_file, tiny_config  # noqa: F401  (text_file is a fixture)


# ``python -m attnlab.cli`` that then records which threads this rank still runs: gloo's workers must be joined
# before Python finalises, or one that releases a finished collective's tensor late aborts the process.
CLI_THEN_THREADS = """
import json, os, sys
from attnlab.cli import main
code = main()
names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
with open(os.path.join(os.environ["THREADS_DIR"], os.environ["RANK"] + ".json"), "w") as f:
    json.dump(names, f)
sys.exit(code)
"""


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_with_double_batch(text_file, tmp_path):
    steps = 6
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    cfg = tiny_config(text_file, ddp_dir, steps=steps, eval_every=3, checkpoint_every=100)
    cfg.data.batch_size = 4
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(cfg.to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THREADS_DIR": str(tmp_path / "threads")}
    launcher = tmp_path / "cli_then_threads.py"
    launcher.write_text(CLI_THEN_THREADS)
    (tmp_path / "threads").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(launcher), "train", "--no-progress", str(cfg_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):  # the process group was destroyed and its threads joined before the interpreter exits
        threads = json.loads((tmp_path / "threads" / f"{rank}.json").read_text())
        assert not [t for t in threads if "gloo" in t], threads

    single = tiny_config(text_file, single_dir, steps=steps, eval_every=3, checkpoint_every=100)
    single.data.batch_size = 8
    train(single, progress=False)

    ddp_rows, single_rows = rows(ddp_dir), rows(single_dir)
    assert [r["step"] for r in ddp_rows] == list(range(1, steps + 1))  # rank 0 alone writes the log
    assert [r["loss"] for r in ddp_rows] == pytest.approx([r["loss"] for r in single_rows], abs=1e-5)
    ddp_val = [r["val_loss"] for r in ddp_rows if "val_loss" in r]
    assert len(ddp_val) == 2
    assert ddp_val == pytest.approx([r["val_loss"] for r in single_rows if "val_loss" in r], abs=1e-5)
    summary = json.loads((ddp_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tokens"] == steps * 8 * 32
    saved = yaml.safe_load((ddp_dir / "config.yaml").read_text())
    assert saved["data"]["batch_size"] == 4


def test_an_image_classifier_trains_under_ddp_and_draws_its_confusion_matrix(tmp_path):
    """Every rank counts its share of the validation batches (the counts are summed), rank 0 draws the matrix;
    no rank waits for another at the end of the run."""
    from attnlab.config import build_config

    cfg = build_config({"model": {"name": "vit-digits", "dim": 32, "num_layers": 1, "num_heads": 2},
                        "data": {"dataset": "digits", "batch_size": 8},
                        "train": {"steps": 2, "eval_every": 2, "checkpoint_every": 2, "eval_batches": 2,
                                  "precision": "fp32", "run_dir": str(tmp_path / "run")}})
    (tmp_path / "cls.yaml").write_text(cfg.to_yaml())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "attnlab.cli",
           "train", "--no-progress", str(tmp_path / "cls.yaml")]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "run" / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "val_top5_accuracy" in rows(tmp_path / "run")[-1]
