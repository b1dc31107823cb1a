"""Training an image model of the vision family on the 8x8 digits for a few steps (the family tests' shared check
that an architecture learns)."""

from __future__ import annotations

import torch

from attnlab.data.registry import get_dataset
from attnlab.models.heads import ImageClassifier
from attnlab.objectives import get_objective


def digits_loss_ratio(body, steps: int, lr: float) -> float:
    """Test-split loss after ``steps`` AdamW steps (batch 64, seeded) over the loss before, for ``body`` under an
    :class:`ImageClassifier` on the digits (1x8x8)."""
    torch.manual_seed(0)
    data = get_dataset("digits")
    model = ImageClassifier(body, 10, data.image_shape)
    step = get_objective("classify")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    test = data.test.batch(torch.arange(len(data.test)))
    first = step(model.eval(), test)[0].item()
    model.train()
    for _ in range(steps):
        loss, _ = step(model, data.train.batch(torch.randint(0, len(data.train), (64,), generator=g)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step(model.eval(), test)[0].item() / first
