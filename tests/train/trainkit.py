"""Tiny runs for the trainer tests: a small structured text file and a 2-layer GPT that trains in seconds."""

from __future__ import annotations

import numpy as np
import pytest

from attnlab.config import build_config

WORDS = ("and the lord said unto moses , behold i will send thee to the people of israel ; "
         "they shall go forth out of the land of egypt . and it came to pass that he spake").split()


def make_text(n_chars: int = 30_000, seed: int = 0) -> str:
    """Word salad with strong local structure (a bigram chain over a fixed vocabulary)."""
    rng = np.random.default_rng(seed)
    out, i, length = [], 0, 0
    while length < n_chars:
        i = (i + 1) % len(WORDS) if rng.random() < 0.8 else int(rng.integers(len(WORDS)))
        out.append(WORDS[i])
        length += len(WORDS[i]) + 1
    return " ".join(out)


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(make_text(), encoding="utf-8")
    return p


def tiny_config(text_file, run_dir, **train):
    """A 2-layer, 32-wide GPT on ``text_file``; ``train`` entries override the train section."""
    raw = {
        "model": {"name": "gpt-tiny", "dim": 32, "num_layers": 2, "num_heads": 2, "max_seq_len": 32},
        "data": {"dataset": str(text_file), "batch_size": 8, "seq_len": 32},
        "train": {"steps": 40, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10, "eval_batches": 2,
                  "checkpoint_every": 20, "precision": "fp32", "run_dir": str(run_dir), **train},
    }
    for key in [k for k in train if "." in k]:  # "model.dropout" style keys go to their section
        section, name = key.split(".", 1)
        raw[section][name] = raw["train"].pop(key)
    return build_config(raw)


# ---------------------------------------------------------------- the command line in real processes

def cli_command(*argv) -> list[str]:
    """``attnlab ARGV...`` as a subprocess command line."""
    import sys

    return [sys.executable, "-m", "attnlab.cli", *map(str, argv)]


def cli_env(**extra) -> dict:
    """The environment of a CLI subprocess: one thread (the cores are shared), no stray torchrun variables."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "ATTNLAB_DEBUG")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def run_cli(*argv, env: dict | None = None, **kwargs):
    """Run ``attnlab ARGV...`` to the end; returns the ``CompletedProcess`` (text output captured)."""
    import subprocess

    return subprocess.run(cli_command(*argv), capture_output=True, text=True, timeout=300,
                          env=env if env is not None else cli_env(), **kwargs)


def start_training(*argv):
    """Start ``attnlab train ARGV...`` in the background (``Popen``, text pipes)."""
    import subprocess

    return subprocess.Popen(cli_command("train", *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env())


def wait_for_steps(proc, metrics, n: int) -> None:
    """Block until ``metrics`` (a ``metrics.jsonl``) has ``n`` rows, which means the training process holds its run
    folder; fails if the process ends first. Polls the file, at most two minutes."""
    import time

    for _ in range(1200):
        if proc.poll() is not None or (metrics.exists() and len(metrics.read_text().splitlines()) >= n):
            break
        time.sleep(0.1)
    assert proc.poll() is None, "training ended before the test could use it: " + "".join(proc.communicate())
    assert len(metrics.read_text().splitlines()) >= n
