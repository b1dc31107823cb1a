"""A tiny GPT and a tiny Encoder (MLM) memorise one batch: the whole training path works end to end."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnlab.models import create_model

V, B, T = 24, 4, 16


def train(model, loss_fn, steps: int, lr: float = 3e-3) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss_fn().item()


def test_tiny_gpt_overfits_one_batch():
    torch.manual_seed(0)
    model = create_model("gpt-tiny", vocab_size=V, dim=32, num_layers=2, num_heads=4, max_seq_len=T)
    ids = torch.randint(0, V, (B, T + 1))

    def loss_fn():
        logits = model(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))

    start = loss_fn().item()
    assert abs(start - torch.log(torch.tensor(float(V))).item()) < 0.3  # starts near uniform
    assert train(model, loss_fn, steps=150) < 0.05


def test_tiny_encoder_overfits_mlm_on_one_batch():
    torch.manual_seed(0)
    mask_id = V - 1
    model = create_model("encoder-tiny", vocab_size=V, dim=32, num_layers=2, num_heads=4, max_seq_len=T)
    ids = torch.randint(0, V - 1, (B, T))
    masked = torch.rand(B, T, generator=torch.Generator().manual_seed(1)) < 0.25
    inputs = torch.where(masked, torch.full_like(ids, mask_id), ids)
    kpm = torch.ones(B, T, dtype=torch.bool)
    kpm[-1, T - 4:] = False  # one padded row: padding must not break training
    targets = ids.masked_fill(~masked | ~kpm, -100)  # loss only on masked, real tokens
    assert (targets != -100).sum() >= 8

    def loss_fn():
        logits = model.mlm_logits(inputs, kpm)
        return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)

    assert train(model, loss_fn, steps=150) < 0.05
