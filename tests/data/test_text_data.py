"""Text LM data: tokenizers, embedded KJV, splits, seeded windows, DDP row assignment, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.data import sources
from attnlab.data.sources import Source, describe_sources, source_path
from attnlab.data.text import WindowSampler, build_lm_data, load_text, sequential_batches, split_tokens
from attnlab.data.text.tokenizers import ByteTokenizer, CharTokenizer, load_tokenizer, save_tokenizer


def test_char_tokenizer_round_trip_and_unknown_characters(tmp_path):
    tok = CharTokenizer.fit("hello, world")
    assert tok.chars == sorted(set("hello, world")) and tok.vocab_size == 9
    ids = tok.encode("world, hello")
    assert ids.dtype == np.int64 and tok.decode(ids) == "world, hello"
    with pytest.raises(ValueError, match=r"\['Z', 'é'\].*data.tokenizer=byte"):
        tok.encode("Zé hello")
    save_tokenizer(tok, tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert again.chars == tok.chars and list(again.encode("hello")) == list(ids[7:])


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode("naïve ☃")
    assert len(ids) == len("naïve ☃".encode()) and ids.max() < 256
    assert tok.decode(ids) == "naïve ☃"


def test_kjv_is_embedded():
    path = source_path("kjv")
    assert path.name == "kjv.jsonl" and path.stat().st_size > 6_000_000
    text = load_text("kjv")
    assert text.startswith("In the beginning God created the heaven and the earth.\n")
    assert len(text) == 4_137_452 and text.count("\n") == 31_103
    data = build_lm_data("kjv", "char", seq_len=256)
    assert data.vocab_size == 65 and len(data.train) + len(data.val) == len(text)
    assert len(data.val) == pytest.approx(0.1 * len(text), rel=0.01)


def test_missing_package_names_the_install_command(monkeypatch):
    fake = Source("fake", "text", "a corpus", "no_such_package_attnlab", "data/x.txt", "pip install fake-corpus")
    monkeypatch.setitem(sources.SOURCES, "fake", fake)
    with pytest.raises(FileNotFoundError, match="pip install fake-corpus"):
        load_text("fake")
    assert {"name": "fake", "kind": "text", "installed": False, "description": "a corpus",
            "install": "pip install fake-corpus"} in describe_sources()


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt.*kjv"):
        load_text(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        build_lm_data(str(tmp_path / "empty.txt"))
    (tmp_path / "short.txt").write_text("just a few words, not enough for a window " * 10)
    with pytest.raises(ValueError, match=r"too short.*validation split of \d+ tokens.*seq_len=256"):
        build_lm_data(str(tmp_path / "short.txt"), seq_len=256)
    (tmp_path / "latin1.txt").write_bytes("café ".encode("latin-1") * 200)
    with pytest.raises(ValueError, match="not UTF-8.*data.tokenizer=byte"):
        build_lm_data(str(tmp_path / "latin1.txt"), "char", seq_len=8)
    data = build_lm_data(str(tmp_path / "latin1.txt"), "byte", seq_len=8)
    assert data.vocab_size == 256 and len(data.train) + len(data.val) == 1000
    with pytest.raises(ValueError, match="not text"):
        load_text("minilm")


def test_interleaved_split_is_deterministic_and_spread():
    tokens = np.arange(10_000)
    train, val = split_tokens(tokens, 0.1)
    assert len(val) == 1000 and len(train) == 9000
    assert sorted(np.concatenate([train, val]).tolist()) == tokens.tolist()  # a partition
    # validation chunks are the 10th, 20th, ... hundredths of the text
    assert val[:100].tolist() == list(range(900, 1000)) and val[-100:].tolist() == list(range(9900, 10_000))
    t2, v2 = split_tokens(tokens, 0.1)
    assert np.array_equal(t2, train) and np.array_equal(v2, val)
    tail_train, tail_val = split_tokens(tokens, 0.25, "tail")
    assert tail_val.tolist() == list(range(7500, 10_000)) and len(tail_train) == 7500


def test_windows_are_seeded_and_targets_shift_by_one():
    tokens = np.arange(5000, dtype=np.int32)
    a = WindowSampler(tokens, seq_len=16, batch_size=4, seed=3)
    b = WindowSampler(tokens, seq_len=16, batch_size=4, seed=3)
    c = WindowSampler(tokens, seq_len=16, batch_size=4, seed=4)
    x, y = a.next(), b.next()
    assert torch.equal(x["idx"], y["idx"]) and not torch.equal(x["idx"], c.next()["idx"])
    assert x["idx"].shape == (4, 16) and x["idx"].dtype == torch.int64
    assert torch.equal(x["targets"], x["idx"] + 1)  # tokens are consecutive integers
    assert not torch.equal(a.next()["idx"], x["idx"])


def test_ranks_and_accumulation_split_the_same_global_batch():
    tokens = np.arange(100_000, dtype=np.int32)
    whole = WindowSampler(tokens, 8, 8, seed=0).batch(5)["idx"]
    r0 = WindowSampler(tokens, 8, 4, seed=0, rank=0, world_size=2).batch(5)["idx"]
    r1 = WindowSampler(tokens, 8, 4, seed=0, rank=1, world_size=2).batch(5)["idx"]
    assert torch.equal(r0, whole[0::2]) and torch.equal(r1, whole[1::2])  # disjoint, union = whole
    acc = WindowSampler(tokens, 8, 4, seed=0, grad_accum=2)
    assert torch.equal(acc.batch(5, 0)["idx"], whole[:4]) and torch.equal(acc.batch(5, 1)["idx"], whole[4:])


def test_sampler_state_round_trip_and_mismatch():
    tokens = np.arange(1000, dtype=np.int32)
    s = WindowSampler(tokens, 8, 2, seed=1, grad_accum=2)
    for _ in range(5):
        s.next()
    t = WindowSampler(tokens, 8, 2, seed=1, grad_accum=2)
    t.load_state_dict(s.state_dict())
    assert torch.equal(t.next()["idx"], s.next()["idx"])
    with pytest.raises(ValueError, match="batch_size=2 but this run has 3"):
        WindowSampler(tokens, 8, 3, seed=1, grad_accum=2).load_state_dict(s.state_dict())


def test_sequential_batches_score_every_token_once():
    tokens = np.arange(1001, dtype=np.int32)
    batches = list(sequential_batches(tokens, seq_len=64, batch_size=4))
    targets = torch.cat([b["targets"].flatten() for b in batches])
    assert targets.tolist() == list(range(1, 1001))
    assert all(torch.equal(b["targets"], b["idx"] + 1) for b in batches)
