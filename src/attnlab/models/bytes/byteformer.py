"""ByteFormer (Horton, Mehta, Farhadi & Rastegari 2023, "Bytes Are All You Need: Transformers Operating Directly On
File Bytes"): a classifier of raw file bytes, with any attention kernel inside its windows.

``bytes (B, L)`` ints in 0..255, ``-1`` padding -> a 257-row embedding (row 256: padding, zero and frozen) -> a
strided convolution (kernel ``k = patch_size``, stride ``k / 2``, no bias) to ``L_1 = (L - k) // (k / 2) + 1`` tokens
-> learned positions -> pre-norm blocks run inside windows of
``window_size`` tokens (odd blocks shifted by half a window, as Swin does in 1-D) -> after each layer of
``merge_after``, token merging (pairs concatenated, ``Linear(2d -> d)``, LayerNorm; a pair is real if either is)
-> final norm, the mean over real tokens, a linear head.

A token is real when every byte under it is (and a file shorter than ``k`` is one token): a file's tokens are then
the same alone or padded into a batch with longer files (tested). The reference counts a token real if any byte
under it is, so the partial tokens at a file's end depend on how much padding follows it.

Windows are batch rows: a block sees ``(B * windows, window_size)`` tokens with the padding as a key padding mask and,
in shifted windows, the tokens that wrapped around from the start as another document, so they do not attend
across the wrap. The masks are the ones ByteFormer's code intends (its own are never applied); any kernel that
takes a padding mask and packed documents serves (checked at build). A window at least as long as the sequence
(``window_size >= max_seq_len``) attends over the whole sequence, in every layer.

Shapes: ``bytes (B, L)`` -> hidden ``(B, T, dim)`` and the mask ``(B, T)``; ``classify`` -> ``(B, num_classes)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention.context import AttentionContext
from ..config import ModelConfig
from ..transformer import build_blocks, init_weights

PAD = 256


class TokenMerging(nn.Module):
    """``(B, T, d)`` with mask ``(B, T)`` -> ``(B, ceil(T / 2), d)``: masked tokens zeroed, consecutive pairs
    concatenated, ``Linear(2d, d)`` without bias, LayerNorm; a merged token is real if either of its pair is."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.reduce, self.norm = nn.Linear(2 * dim, dim, bias=False), nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x = x * mask[..., None]
        if x.shape[1] % 2:
            x, mask = F.pad(x, (0, 0, 0, 1)), F.pad(mask, (0, 1))
        B, T, D = x.shape
        return self.norm(self.reduce(x.reshape(B, T // 2, 2 * D))), mask.view(B, T // 2, 2).any(-1)


def conv_tokens(length: int, kernel: int) -> int:
    """Tokens of the byte convolution: ``(L - k) // (k / 2) + 1`` (an input shorter than ``k`` is padded to it)."""
    return (max(length, kernel) - kernel) // (kernel // 2) + 1


class ByteFormer(nn.Module):
    """Raw-bytes classifier (see the module docstring).

    Config fields used: ``dim``, ``num_layers``, ``num_heads``, ``mlp_dim``, ``patch_size`` (the byte convolution's
    kernel, even), ``window_size`` (``>= max_seq_len``: no windows), ``merge_after``, ``max_seq_len`` (tokens after the
    convolution), ``attention`` (+ options, per layer), ``norm_eps``, ``dropout``, ``num_classes``.

    Raises:
        ValueError: an odd ``patch_size``, ``merge_after`` outside the layers; at call, byte values outside -1..255,
            an empty file, a file longer than ``max_seq_len`` tokens.
        CapabilityError: at build time, a kernel without key padding masks or packed documents (windows need both).
    """

    causal = False
    reads = "bytes"  # the whole-example input it classifies (models.heads.PooledClassifier)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.patch_size % 2 or cfg.patch_size < 2:
            raise ValueError(f"ByteFormer's byte convolution strides half its kernel: patch_size={cfg.patch_size} "
                             "must be even")
        bad = [i for i in cfg.merge_after if not 0 <= i < cfg.num_layers]
        if bad:
            raise ValueError(f"merge_after names layers {bad} outside 0..{cfg.num_layers - 1}")
        self.cfg = cfg
        self.embed = nn.Embedding(PAD + 1, cfg.dim, padding_idx=PAD)
        self.conv = nn.Conv1d(cfg.dim, cfg.dim, cfg.patch_size, stride=cfg.patch_size // 2, bias=False)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.max_seq_len, cfg.dim))
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = build_blocks(cfg)
        self.merges = nn.ModuleDict({str(i): TokenMerging(cfg.dim, cfg.norm_eps) for i in cfg.merge_after})
        self.final_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes else None
        init_weights(self, cfg)
        nn.init.trunc_normal_(self.embed.weight, std=cfg.dim ** -0.5)
        nn.init.trunc_normal_(self.pos_emb, std=cfg.init_std)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
        for block in self.blocks:
            block.attn.kernel.capabilities.require(block.attn.kernel.name, bidirectional=True, key_padding_mask=True,
                                                   packed=cfg.window_size < cfg.max_seq_len)

    def tokens_of(self, length: int) -> int:
        """Tokens a file of ``length`` bytes becomes (what ``max_seq_len`` must hold)."""
        return conv_tokens(length, self.cfg.patch_size)

    def tokens(self, data: Tensor) -> tuple[Tensor, Tensor]:
        """``bytes (B, L)`` -> conv tokens with positions ``(B, T, dim)`` and their mask ``(B, T)``."""
        if data.dim() != 2 or data.dtype.is_floating_point:
            raise ValueError(f"expected integer bytes of shape (batch, length), got {tuple(data.shape)} {data.dtype}")
        if data.numel() and (data.min() < -1 or data.max() > 255):
            raise ValueError("byte values must be 0..255 (and -1 for padding); read files as uint8 and pad with -1")
        k = self.cfg.patch_size
        if data.shape[1] < k:  # shorter than one kernel: padded up to it
            data = F.pad(data, (0, k - data.shape[1]), value=-1)
        valid = data >= 0
        if not valid.any(-1).all():
            raise ValueError("an input holds no bytes (empty file, or only padding)")
        x = self.embed(torch.where(valid, data, PAD).long())  # (B, L, d)
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, d)
        spans = valid.unfold(1, k, k // 2)  # (B, T, k)
        mask = spans.all(-1)  # every byte under the token real: independent of the padding that follows
        mask[:, 0] |= spans[:, 0].any(-1)  # a file shorter than one kernel is its first token
        T = x.shape[1]
        if T > self.cfg.max_seq_len:
            raise ValueError(f"{data.shape[1]} bytes make {T} tokens but max_seq_len={self.cfg.max_seq_len} "
                             f"(at most {(self.cfg.max_seq_len - 1) * (k // 2) + k} bytes); crop the file or build "
                             "a larger model")
        return self.dropout(x + self.pos_emb[:, :T]), mask

    def _windowed(self, block: nn.Module, x: Tensor, mask: Tensor, shift: int) -> Tensor:
        """``block`` inside windows of ``window_size`` tokens, rolled left by ``shift`` (see the module docstring)."""
        w = self.cfg.window_size
        B, T, D = x.shape
        if w >= self.cfg.max_seq_len or (T <= w and not shift):
            return block(x, AttentionContext(causal=False, key_padding_mask=mask))
        pad = -T % w
        xs, ms = F.pad(x, (0, 0, 0, pad)), F.pad(mask, (0, pad))
        doc = torch.zeros(B, T + pad, dtype=torch.long, device=x.device)
        if shift:
            xs, ms = xs.roll(-shift, 1), ms.roll(-shift, 1)
            doc[:, -shift:] = 1  # wrapped from the start: its own document in the last window
        n = (T + pad) // w
        ctx = AttentionContext(causal=False, key_padding_mask=ms.reshape(B * n, w),
                               document_ids=doc.reshape(B * n, w) if shift else None)
        y = block(xs.reshape(B * n, w, D), ctx).reshape(B, T + pad, D)
        return (y.roll(shift, 1) if shift else y)[:, :T]

    def encode(self, data: Tensor) -> tuple[Tensor, Tensor]:
        """``bytes (B, L)`` -> final hidden states ``(B, T, dim)`` and the mask of real tokens ``(B, T)``."""
        x, mask = self.tokens(data)
        for i, block in enumerate(self.blocks):
            shift = self.cfg.window_size // 2 if i % 2 and self.cfg.window_size < self.cfg.max_seq_len else 0
            x = self._windowed(block, x, mask, shift)
            if str(i) in self.merges:
                x, mask = self.merges[str(i)](x, mask)
        return self.final_norm(x), mask

    def forward(self, data: Tensor) -> Tensor:
        return self.encode(data)[0]

    def pooled(self, data: Tensor) -> Tensor:
        """``(B, dim)``: the mean over real tokens."""
        h, mask = self.encode(data)
        m = mask[..., None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)

    def classify(self, data: Tensor) -> Tensor:
        """``(B, num_classes)`` logits. Raises ``ValueError`` without a head (``num_classes=0``)."""
        if self.head is None:
            raise ValueError("this ByteFormer has no classification head: build it with num_classes=<labels>")
        return self.head(self.pooled(data))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
