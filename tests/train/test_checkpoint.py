"""Checkpoints: pickle-free round trip, atomic writes, keep-last-K, corrupt and truncated files."""

from __future__ import annotations

import hashlib
import json
import os
import random

import numpy as np
import pytest
import torch

from attnlab.models import create_model
from attnlab.train import train
from attnlab.train.checkpoint import (CheckpointError, capture_rng, latest_checkpoint, list_checkpoints,
                                      load_training_state, load_weights, restore_rng, save_checkpoint,
                                      verify_checkpoint)
from attnlab.train.optim import build_optimizer

from trainkit import text_file, tiny_config  # noqa: F401  (text_file is a fixture)


def model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = create_model("gpt-tiny", vocab_size=17, dim=16, num_layers=1, num_heads=2, max_seq_len=8)
    opt = build_optimizer(model, 1e-2, 0.1)
    x = torch.randint(0, 17, (2, 8))
    model(x).sum().backward()
    opt.step()
    return model, opt


def save(run, step, model, opt, keep=2):
    tensors, js = capture_rng()
    return save_checkpoint(run, step, model, opt, {"rng": js, "note": step}, tensors, keep=keep)


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    model, opt = model_and_optimizer(0)
    random.seed(5), np.random.seed(6), torch.manual_seed(7)
    path = save(tmp_path, 3, model, opt)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    other, other_opt = model_and_optimizer(1)
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.path == path and ckpt.step == 3 and ckpt.state["note"] == 3
    load_weights(other, ckpt)
    rng_tensors, state = load_training_state(ckpt, other_opt)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    sa, sb = opt.state_dict()["state"], other_opt.state_dict()["state"]
    assert sorted(sa) == sorted(sb) and len(sa) == len(list(model.parameters()))
    for i in sa:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[i][key], sb[i][key]), (i, key)
    restore_rng(rng_tensors, state["rng"])
    assert random.random() == expected[0] and np.random.rand() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


def test_no_pickle_anywhere(tmp_path):
    model, opt = model_and_optimizer()
    path = save(tmp_path, 1, model, opt)
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    json.loads((path / "state.json").read_text())
    for f in path.glob("*.safetensors"):
        assert f.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then a JSON header


def test_keeps_the_newest_k(tmp_path):
    model, opt = model_and_optimizer()
    for step in (1, 2, 3, 4):
        save(tmp_path, step, model, opt, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000003", "step-0000004"]


def test_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = model_and_optimizer()
    good = save(tmp_path, 1, model, opt)
    digest = hashlib.sha256((good / "model.safetensors").read_bytes()).hexdigest()
    import attnlab.train.checkpoint as C

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(C, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save(tmp_path, 2, model, opt)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000001"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert hashlib.sha256((good / "model.safetensors").read_bytes()).hexdigest() == digest
    verify_checkpoint(good)


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated"),
    ("flip", "SHA-256"),
    ("delete_state", "state.json is missing"),
    ("garble_state", "state.json cannot be read"),
])
def test_damaged_checkpoint_is_a_clear_error(tmp_path, damage, message):
    model, opt = model_and_optimizer()
    save(tmp_path, 1, model, opt)
    bad = save(tmp_path, 2, model, opt)
    f = bad / "model.safetensors"
    if damage == "truncate":
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data = bytearray(f.read_bytes())
        data[-5] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "delete_state":
        (bad / "state.json").unlink()
    else:
        (bad / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=message) as err:
        latest_checkpoint(tmp_path)
    assert "step-0000001" in str(err.value)  # names the previous, intact checkpoint


def test_resume_from_corrupt_checkpoint_changes_nothing(text_file, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(text_file, run, steps=4, checkpoint_every=2), progress=False)
    good, bad = list_checkpoints(run)
    data = (bad / "optimizer.safetensors").read_bytes()
    (bad / "optimizer.safetensors").write_bytes(data[:100])
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    with pytest.raises(CheckpointError, match="truncated"):
        train(tiny_config(text_file, run, steps=8, checkpoint_every=2), resume=True, progress=False)
    after = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert after == before  # nothing written, nothing deleted


def test_weights_load_with_torch_safetensors_only(tmp_path):
    model, opt = model_and_optimizer()
    path = save(tmp_path, 1, model, opt)
    from safetensors.torch import load_file

    tensors = load_file(str(path / "model.safetensors"))
    assert torch.equal(tensors["embed.tok_emb.weight"], model.embed.tok_emb.weight.detach())
    assert os.path.getsize(path / "rng.safetensors") > 5000  # the 5056-byte torch CPU generator state
