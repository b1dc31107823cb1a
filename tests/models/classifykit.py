"""Training a model's ``classify`` on an in-memory task for a few steps (the audio and bytes family tests)."""

from __future__ import annotations

import torch


def held_out_accuracy(model, train: tuple, test: tuple, steps: int, lr: float = 3e-3, batch: int = 32) -> float:
    """AdamW on ``train = (inputs, labels)`` with seeded batches, then the accuracy of ``model.classify`` on
    ``test`` in eval mode."""
    x, y = train
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        i = torch.randint(0, len(x), (batch,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(model.classify(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (model.eval().classify(test[0]).argmax(-1) == test[1]).float().mean().item()
