"""Audio Spectrogram Transformer (Gong, Chung & Glass 2021, "AST: Audio Spectrogram Transformer"), any kernel.

A log-mel spectrogram ``(B, frames, mel_bins)`` (:func:`attnlab.data.audio.fbank`) is read as a one-channel image
``(B, 1, mel_bins, frames)``; ``patch_size x patch_size`` patches with stride ``patch_stride = [f_s, t_s]``
(overlapping in AST: 16 with stride 10) become tokens in frequency-major order (token ``i_f * T' + i_t``, with
``F' = (mel_bins - 16) // f_s + 1``, ``T' = (frames - 16) // t_s + 1``). With ``pooling="cls"`` (AST) a class token
and a DeiT distillation token come first and the clip is the mean of the two; learned positions are added to
every token; the shared pre-norm body and a final LayerNorm follow; the head is LayerNorm + linear. With
``pooling="mean"`` there are no prefix tokens and every grid kernel runs on the ``(F', T')`` patch grid.

Shapes: ``spectrogram (B, frames, mel_bins)`` -> hidden ``(B, T, dim)``; ``classify`` -> ``(B, num_classes)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..transformer import TransformerBody, init_weights
from ..vision.probe import check_prefix_tokens


class SpectrogramPatches(nn.Module):
    """``(B, frames, mel_bins)`` -> ``(B, T, dim)``: overlapping patches, prefix tokens, learned positions.

    Raises:
        ValueError: a spectrogram of another shape than the model's (the position table is fixed).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        k = cfg.patch_size
        fs, ts = cfg.patch_stride or [k, k]
        if cfg.mel_bins < k or cfg.frames < k:
            raise ValueError(f"a {cfg.frames} x {cfg.mel_bins} spectrogram is smaller than one {k}x{k} patch; "
                             "use a smaller patch_size or more frames")
        self.shape = (cfg.frames, cfg.mel_bins)
        self.grid = ((cfg.mel_bins - k) // fs + 1, (cfg.frames - k) // ts + 1)
        self.proj = nn.Conv2d(1, cfg.dim, kernel_size=k, stride=(fs, ts))
        prefix = 2 if cfg.pooling == "cls" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if prefix else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if prefix else None
        self.num_tokens = self.grid[0] * self.grid[1] + prefix
        self.pos_emb = nn.Parameter(torch.zeros(1, self.num_tokens, cfg.dim))
        for p in (self.cls_token, self.dist_token, self.pos_emb):
            if p is not None:
                nn.init.trunc_normal_(p, std=cfg.init_std)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, spec: Tensor) -> Tensor:
        if spec.dim() != 3 or tuple(spec.shape[1:]) != self.shape:
            raise ValueError(f"expected spectrograms of shape (batch, {self.shape[0]} frames, {self.shape[1]} mel "
                             f"bins), got {tuple(spec.shape)}; pad or cut the frames, or build the model with "
                             "matching frames / mel_bins")
        x = self.proj(spec.to(self.proj.weight.dtype).transpose(1, 2).unsqueeze(1))  # (B, D, F', T')
        x = x.flatten(2).transpose(1, 2)  # (B, F'T', D), frequency-major
        if self.cls_token is not None:
            B = x.shape[0]
            x = torch.cat([self.cls_token.expand(B, -1, -1), self.dist_token.expand(B, -1, -1), x], dim=1)
        return self.dropout(x + self.pos_emb)


class AST(TransformerBody):
    """Spectrogram classifier / feature extractor (see the module docstring).

    Config fields used: ``mel_bins``, ``frames``, ``patch_size``, ``patch_stride``, ``pooling``, ``dim``,
    ``num_layers``, ``num_heads``, ``mlp_dim``, ``norm_eps``, ``attention`` (+ options), ``num_classes``.

    Raises:
        ValueError: a spectrogram smaller than a patch, ``max_seq_len`` below the token count, inputs of the
            wrong shape.
        CapabilityError: at build time, a kernel that cannot run bidirectionally on the patch grid (with the two
            prefix tokens under ``pooling="cls"``), naming those that can.
    """

    causal = False

    def __init__(self, cfg: ModelConfig):
        embed = SpectrogramPatches(cfg)
        if cfg.max_seq_len < embed.num_tokens:
            raise ValueError(f"a {cfg.frames}-frame spectrogram is {embed.num_tokens} tokens here but max_seq_len="
                             f"{cfg.max_seq_len}; set max_seq_len={embed.num_tokens}")
        super().__init__(cfg, embed=embed)
        self.head = (nn.Sequential(nn.LayerNorm(cfg.dim, eps=cfg.norm_eps), nn.Linear(cfg.dim, cfg.num_classes))
                     if cfg.num_classes else None)
        init_weights(self, cfg)
        check_prefix_tokens([b.attn for b in self.blocks], embed.num_tokens, embed.grid, "AST")

    @property
    def grid(self) -> tuple[int, int]:
        """``(F', T')``: frequency rows x time columns of the patch grid."""
        return self.embed.grid

    def forward(self, spec: Tensor) -> Tensor:
        return self.encode(None, inputs_embeds=self.embed(spec), grid=self.grid)

    def pooled(self, spec: Tensor) -> Tensor:
        """``(B, dim)``: the mean of the class and distillation tokens (``pooling="cls"``), else of the patches."""
        h = self(spec)
        return (h[:, 0] + h[:, 1]) / 2 if self.cfg.pooling == "cls" else h.mean(dim=1)

    def classify(self, spec: Tensor) -> Tensor:
        """``(B, num_classes)`` logits. Raises ``ValueError`` without a head (``num_classes=0``)."""
        if self.head is None:
            raise ValueError("this AST has no classification head: build it with num_classes=<number of labels>")
        return self.head(self.pooled(spec))

    def attention_maps(self, spec: Tensor, **kwargs) -> list[Tensor]:
        """Per-layer ``(B, H, T, T)`` maps (class and distillation tokens first under ``pooling="cls"``)."""
        return super().attention_maps(None, inputs_embeds=self.embed(spec), grid=self.grid, **kwargs)
