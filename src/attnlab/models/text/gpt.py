"""Decoder-only language model (GPT-2, Radford et al. 2019), with any attention kernel."""

from __future__ import annotations

from torch import Tensor, nn

from ...native.linear import Linear
from ..config import ModelConfig
from ..transformer import TransformerBody, init_weights


class GPT(TransformerBody):
    """Causal LM: ``idx (B, T)`` -> logits ``(B, T, vocab_size)``.

    Args:
        cfg: a :class:`ModelConfig` (``tie_weights`` shares the embedding with the output head).

    Raises:
        CapabilityError: the attention kernel cannot run causally (or lacks a feature the
            positional encoding needs), at build time.
        ValueError: input longer than ``max_seq_len`` or token ids outside the vocabulary.
        TypeError: token ids that are not an integer tensor (names the dtype).
    """

    causal = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.head = Linear(cfg.dim, cfg.vocab_size, bias=False)  # native: the few-row decoding kernel
        init_weights(self, cfg)
        if cfg.tie_weights:
            self.head.weight = self.embed.tok_emb.weight

    def forward(self, idx: Tensor, *, cache: list | None = None, positions: Tensor | None = None,
                document_ids: Tensor | None = None, key_padding_mask: Tensor | None = None,
                grid: tuple[int, int] | None = None) -> Tensor:
        """Args:
            idx: ``(B, T)`` token ids.
            cache: per-layer caches from :meth:`new_cache` for incremental decoding (new tokens only).
            positions: ``(T,)`` or ``(B, T)`` absolute positions (default: continue after the cache).
            document_ids: ``(B, T)`` ids of packed documents (attention stays within a document).
            key_padding_mask: ``(B, T)`` bool, True = real token.
            grid: ``(rows, cols)`` when the sequence is a row-major 2-D grid.
        """
        h = self.encode(idx, key_padding_mask=key_padding_mask, document_ids=document_ids,
                        positions=positions, grid=grid, cache=cache)
        return self.head(h)  # (B, T, vocab)
