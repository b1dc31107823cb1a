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
