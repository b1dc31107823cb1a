"""AdamW (Loshchilov & Hutter 2019) with weight-decay groups, and linear warmup + cosine decay.

Following GPT-2/nanoGPT practice, only matrices of linear layers decay; norms, biases and embeddings
(including a head tied to the embedding) do not.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: ``decay`` (weights of ``nn.Linear`` and other >=2-D non-embedding params) and ``no_decay``.

    Tied parameters appear once (``named_parameters`` deduplicates them); a parameter shared with an
    embedding counts as an embedding.
    """
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            no_decay_ids.add(id(module.weight))
        for name, p in module.named_parameters(recurse=False):
            if p.dim() < 2 or "norm" in type(module).__name__.lower() or name == "bias":
                no_decay_ids.add(id(p))
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if id(p) in no_decay_ids else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.99),
                    eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; the fused implementation where the device supports it.

    Raises:
        ValueError: the model has no trainable parameters.
    """
    groups = param_groups(model, weight_decay)
    if not any(g["params"] for g in groups):
        raise ValueError("model has no trainable parameters")
    device = next(model.parameters()).device
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine to ``lr * min_lr_ratio``.

    Warmup reaches ``lr`` at ``step == warmup_steps - 1`` (no step is taken at lr 0); after ``total_steps``
    the rate stays at the floor.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = lr * min_lr_ratio
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """Sets each group's ``lr`` from :func:`lr_at`; its whole state is the step counter (JSON-serialisable)."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, warmup_steps: int, total_steps: int,
                 min_lr_ratio: float = 0.1):
        self.optimizer, self.lr, self.warmup_steps = optimizer, lr, warmup_steps
        self.total_steps, self.min_lr_ratio = total_steps, min_lr_ratio
        self.step_count = 0

    def apply(self) -> float:
        """Set the rate for the upcoming optimizer step and return it."""
        rate = lr_at(self.step_count, self.lr, self.warmup_steps, self.total_steps, self.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        return rate

    def step(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "lr": self.lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "min_lr_ratio": self.min_lr_ratio}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
