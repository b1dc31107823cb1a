"""Per-layer KV caches for incremental decoding.

A cache is owned by one attention layer. ``update(k_new, v_new)`` stores the new keys/values
``(B, Hkv, T_new, Dh)`` and returns the keys/values the new queries must attend to, bottom-right
aligned (the new queries are the last ``T_new`` of them). ``seen`` counts every token ever added,
which gives absolute positions for RoPE.
"""

from __future__ import annotations

import torch
from torch import Tensor


class DenseKVCache:
    """Preallocated ``(B, Hkv, max_len, Dh)`` buffers; memory grows to ``max_len`` (GQA: Hkv heads)."""

    def __init__(self, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int, device=None, dtype=None):
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.seen = 0

    def update(self, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        t = k_new.shape[2]
        if self.seen + t > self.max_len:
            raise ValueError(
                f"KV cache full: {self.seen} cached + {t} new tokens > max_len={self.max_len}; "
                "create the cache with a larger max_len (at most the model's max_seq_len)"
            )
        if self.k.dtype != k_new.dtype:  # first call under autocast decides the storage dtype
            self.k = self.k.to(k_new.dtype)
            self.v = self.v.to(v_new.dtype)
        self.k[:, :, self.seen : self.seen + t] = k_new
        self.v[:, :, self.seen : self.seen + t] = v_new
        self.seen += t
        return self.k[:, :, : self.seen], self.v[:, :, : self.seen]

    @property
    def num_bytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class RollingKVCache:
    """Keeps only the last ``window`` keys/values: memory does not grow with generated length.

    ``update`` returns the retained keys followed by the new ones, so every new query still sees the
    ``window`` keys it needs; the stored state is then trimmed back to ``window`` entries.
    """

    def __init__(self, batch_size: int, num_kv_heads: int, head_dim: int, window: int, device=None, dtype=None):
        shape = (batch_size, num_kv_heads, 0, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.window = window
        self.max_len = None
        self.seen = 0

    def update(self, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        k_all = torch.cat([self.k.to(k_new.dtype), k_new], dim=2)  # (B, Hkv, kept + T_new, Dh)
        v_all = torch.cat([self.v.to(v_new.dtype), v_new], dim=2)
        self.k = k_all[:, :, -self.window :].detach().clone()
        self.v = v_all[:, :, -self.window :].detach().clone()
        self.seen += k_new.shape[2]
        return k_all, v_all

    @property
    def num_bytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class CrossKVCache:
    """The memory's projected keys and values for cross-attention, computed once per generation.

    The memory (an encoder's output) does not change while a decoder generates, so its ``(B, Hkv, S, Dh)``
    keys and values are projected on the first decoding step and reused on every later one. ``seen`` counts
    the decoder tokens that have queried it (cross-attention itself ignores positions).
    """

    def __init__(self):
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.seen = 0

    @property
    def filled(self) -> bool:
        return self.k is not None

    def store(self, k: Tensor, v: Tensor) -> None:
        """Keep the memory's keys and values ``(B, Hkv, S, Dh)``; raises ``ValueError`` if already filled."""
        if self.filled:
            raise ValueError("this cross-attention cache already holds a memory; create a new cache per generation")
        self.k, self.v = k.detach(), v.detach()

    @property
    def num_bytes(self) -> int:
        return 0 if self.k is None else self.k.numel() * self.k.element_size() * 2


def keys_after_update(cache, new_tokens: int) -> int:
    """How many keys the kernel will see once ``new_tokens`` are added to ``cache`` (None = no cache)."""
    if cache is None:
        return new_tokens
    if isinstance(cache, RollingKVCache):
        return min(cache.seen, cache.window) + new_tokens
    return cache.seen + new_tokens
