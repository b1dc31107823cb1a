"""Token and byte embeddings."""

from __future__ import annotations

from torch import Tensor, nn


class TokenEmbedding(nn.Embedding):
    """``ids (B, T)`` -> ``(B, T, dim)``; raises ``ValueError`` for ids outside ``[0, vocab_size)``."""

    def __init__(self, vocab_size: int, dim: int, init_std: float = 0.02):
        super().__init__(vocab_size, dim)
        nn.init.normal_(self.weight, std=init_std)

    def forward(self, ids: Tensor) -> Tensor:
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
