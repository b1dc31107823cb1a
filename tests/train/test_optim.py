"""AdamW decay groups and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.models import create_model
from attnlab.train.optim import WarmupCosine, build_optimizer, lr_at, param_groups


def test_decay_groups_exclude_norms_biases_embeddings():
    model = create_model("gpt-tiny", vocab_size=11, dim=16, num_layers=2, num_heads=2, max_seq_len=8)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = sorted(names[id(p)] for p in decay["params"])
    no_decay_names = sorted(names[id(p)] for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(n.endswith(".weight") and ("proj" in n or "fc_" in n) for n in decay_names), decay_names
    assert len(decay_names) == 2 * 6  # q, k, v, out, fc_in, fc_out per block
    assert "embed.tok_emb.weight" in no_decay_names and "embed.pos_emb.weight" in no_decay_names
    assert all(("norm" in n or n.endswith("bias") or "emb" in n) for n in no_decay_names), no_decay_names
    # every parameter exactly once (the tied head is the token embedding)
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))


def test_optimizer_steps_only_decay_group_without_gradients():
    model = create_model("gpt-tiny", vocab_size=11, dim=16, num_layers=1, num_heads=2, max_seq_len=8)
    opt = build_optimizer(model, lr=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if n.endswith("q_proj.weight"):
            torch.testing.assert_close(p, before[n] * (1 - 0.1 * 0.5))  # decoupled decay: w -= lr * wd * w
        else:
            assert torch.equal(p, before[n]) or not n.endswith(("bias", "tok_emb.weight")), n


def test_schedule_shape():
    lr, warm, total = 1e-3, 10, 110
    rates = [lr_at(s, lr, warm, total, 0.1) for s in range(total + 5)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(lr)  # linear warmup, peak at step 9
    assert rates[10] == pytest.approx(lr)
    assert rates[60] == pytest.approx(1e-4 + 0.5 * (lr - 1e-4))  # halfway through the cosine
    assert rates[110] == pytest.approx(1e-4) and rates[-1] == pytest.approx(1e-4)  # the floor
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert lr_at(0, lr, 0, 100, 0.0) == lr and lr_at(100, lr, 0, 100, 0.0) == pytest.approx(0.0)


def test_scheduler_state_is_the_step():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    s = WarmupCosine(opt, 1e-3, 5, 50)
    for _ in range(7):
        s.apply()
        s.step()
    state = s.state_dict()
    t = WarmupCosine(opt, 1e-3, 5, 50)
    t.load_state_dict(state)
    assert t.apply() == s.apply() == opt.param_groups[0]["lr"]
    assert math.isclose(t.apply(), lr_at(7, 1e-3, 5, 50))
