"""Token and byte embeddings."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def check_token_ids(ids) -> None:
    """Raises ``TypeError`` unless ``ids`` is a tensor of integers (names its type or dtype and the fix)."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"token ids must be a tensor of integers, got {type(ids).__name__}; convert them with "
                        "torch.tensor(ids, dtype=torch.long)")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"token ids must be integers (torch.long), got dtype {ids.dtype}; convert them with "
                        "ids.long() (an already embedded input goes in as inputs_embeds=)")


class TokenEmbedding(nn.Embedding):
    """``ids (B, T)`` -> ``(B, T, dim)``.

    Raises:
        TypeError: ``ids`` is not an integer tensor (names the dtype).
        ValueError: ids outside ``[0, vocab_size)``.
    """

    def __init__(self, vocab_size: int, dim: int, init_std: float = 0.02):
        super().__init__(vocab_size, dim)
        nn.init.normal_(self.weight, std=init_std)

    def forward(self, ids: Tensor) -> Tensor:
        check_token_ids(ids)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise ValueError(
                f"token id out of range: got ids in [{int(ids.min())}, {int(ids.max())}] but vocab_size="
                f"{self.num_embeddings}; check the tokenizer matches the model"
            )
        return super().forward(ids)


class ByteEmbedding(TokenEmbedding):
    """Raw bytes (0..255) plus ``num_special`` extra ids (pad, cls, ...) placed after 255."""

    def __init__(self, dim: int, num_special: int = 0):
        super().__init__(256 + num_special, dim)
