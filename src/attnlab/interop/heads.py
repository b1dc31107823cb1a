"""Hugging Face heads that attnlab's families do not have natively: BERT/ViT poolers and BERT's
pooled classifier (Devlin et al. 2019: ``tanh(W h_[CLS] + b)`` feeds next-sentence / classification)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Pooler(nn.Module):
    """``tanh(dense(h[:, 0]))``: ``(B, T, D) -> (B, D)`` (BertPooler / ViTPooler)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class PooledClassifier(nn.Module):
    """BertForSequenceClassification's head on the pooled [CLS] vector: ``(B, D) -> (B, num_classes)``.

    Replaces :class:`~attnlab.models.text.encoder.ClassificationHead` so ``Encoder.classify`` (with
    ``pooling="cls"``) equals the Hugging Face logits: ``out(dropout(tanh(dense(h_cls))))``.
    """

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.out(self.dropout(torch.tanh(self.dense(pooled))))


class AbsentHead(nn.Module):
    """Stands in for a head the checkpoint does not have (a BertModel has no masked-LM head).

    Raises:
        ValueError: when called, naming what to load instead.
    """

    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def forward(self, *args, **kwargs):
        raise ValueError(self.message)
