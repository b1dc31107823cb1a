"""Kernels' own training objectives (the Routing Transformer's commitment loss) reach the gradients."""

from __future__ import annotations

import torch

from attnlab.attention.base import pop_aux_loss
from attnlab.models import create_model
from attnlab.train import train
from trainkit import text_file, tiny_config  # noqa: F401  (text_file is a fixture)

ROUTING = {"num_clusters": 2, "window": 8, "commitment": 0.5}


def test_pop_aux_loss_sums_every_kernel_and_clears_it():
    torch.manual_seed(0)
    model = create_model("gpt-tiny", vocab_size=11, dim=32, num_layers=2, num_heads=2, max_seq_len=16,
                         attention="routing", attention_options=ROUTING)
    model(torch.randint(0, 11, (2, 16)))
    kernels = [b.attn.kernel for b in model.blocks]
    expected = sum(k.aux_loss for k in kernels)
    assert expected.requires_grad and float(expected.detach()) > 0
    got = pop_aux_loss(model)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert all(k.aux_loss is None for k in kernels) and pop_aux_loss(model) is None
    model.eval()
    model(torch.randint(0, 11, (2, 16)))
    assert pop_aux_loss(model) is None  # eval forward: no training objective


def test_trainer_adds_the_commitment_loss(text_file, tmp_path):
    """Same seed and data: the first loss (before any update) is identical, later ones differ only because
    the commitment term entered the gradients; the reported loss is the task loss alone."""
    runs = {}
    for beta in (0.0, 50.0):
        cfg = tiny_config(text_file, tmp_path / f"b{beta}", steps=3, eval_every=3, checkpoint_every=3,
                          **{"model.attention": "routing",
                             "model.attention_options": {**ROUTING, "commitment": beta}})
        runs[beta] = train(cfg, progress=False).losses
    assert runs[0.0][0] == runs[50.0][0]
    assert runs[0.0][2] != runs[50.0][2]
