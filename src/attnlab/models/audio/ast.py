"""Audio Spectrogram Transformer (Gong, Chung & Glass 2021, "AST: Audio Spectrogram Transformer"), any kernel.

A log-mel spectrogram ``(B, frames, mel_bins)`` (:func:`attnlab.data.audio.fbank`) is read as a one-channel image
``(B, 1, mel_bins, frames)``; ``k_f x k_t`` patches (``patch_size`` in both, or ``patch_shape = [k_f, k_t]``, e.g.
SSAST's frame patches ``[128, 2]``) with stride ``patch_stride = [f_s, t_s]`` (overlapping in AST: 16 with stride 10)
become tokens in frequency-major order (token ``i_f * T' + i_t``, with ``F' = (mel_bins - k_f) // f_s + 1``,
``T' = (frames - k_t) // t_s + 1``). With ``pooling="cls"`` (AST) a class token
and a DeiT distillation token come first and the clip is the mean of the two; learned positions are added to
every token; the shared pre-norm body and a final LayerNorm follow; the head is LayerNorm + linear. With
``pooling="mean"`` there are no prefix tokens and every grid kernel runs on the ``(F', T')`` patch grid.

PaSST (Koutini et al. 2022, "Efficient Training of Audio Transformers with Patchout"): ``axis_positions`` learns one
position per frequency row plus one per time column (and one per prefix token) instead of one per patch;
``patchout = [s_f, s_t, u]`` drops, while training only, ``s_f`` random frequency rows and ``s_t`` random time
columns of the patch grid (the grid stays a grid, smaller) and then ``u`` random patches (the tokens are then a
plain sequence: grid kernels are refused at build), the same ones for the whole batch, after the positions are
added so every kept patch keeps its own. ``N = (F' - s_f)(T' - s_t) - u + 2`` tokens in training; none dropped in
eval. ``generator`` (an attribute, default the global RNG) makes the draws reproducible.

Shapes: ``spectrogram (B, frames, mel_bins)`` -> hidden ``(B, T, dim)``; ``classify`` -> ``(B, num_classes)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...attention.capabilities import CapabilityError
from ..config import ModelConfig
from ..transformer import TransformerBody, init_weights
from ..probe import check_prefix_tokens


def patch_kernel(cfg: ModelConfig) -> tuple[int, int]:
    """``(frequency, time)`` size of a patch: ``patch_shape``, or ``patch_size`` in both."""
    return (cfg.patch_shape[0], cfg.patch_shape[1]) if cfg.patch_shape else (cfg.patch_size, cfg.patch_size)


def patch_strides(cfg: ModelConfig) -> tuple[int, int]:
    """``(frequency, time)`` strides of the patches: ``patch_stride`` as a pair, one int for both, or the patch size
    (:func:`patch_kernel`: no overlap).

    Raises:
        ValueError: a list that is not two positive ints.
    """
    stride = cfg.patch_stride
    if stride is None:
        return patch_kernel(cfg)
    pair = [stride, stride] if isinstance(stride, int) else list(stride)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"patch_stride is [frequency, time] (or one int), both >= 1; got {stride}")
    return pair[0], pair[1]


class SpectrogramPatches(nn.Module):
    """``(B, frames, mel_bins)`` -> ``(B, T, dim)`` and the grid of the patch tokens (``None`` after unstructured
    patchout): overlapping patches, positions, patchout (training), prefix tokens.

    Raises:
        ValueError: a spectrogram smaller than a patch, patchout that leaves nothing; at call, a spectrogram of
            another shape than the model's (the position table is fixed).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        kf, kt = patch_kernel(cfg)
        fs, ts = patch_strides(cfg)
        if cfg.mel_bins < kf or cfg.frames < kt:
            raise ValueError(f"a {cfg.frames}-frame x {cfg.mel_bins}-mel-bin spectrogram is smaller than one patch of "
                             f"{kt} frames x {kf} mel bins; use a smaller patch_size / patch_shape or more frames")
        self.shape = (cfg.frames, cfg.mel_bins)
        self.grid = ((cfg.mel_bins - kf) // fs + 1, (cfg.frames - kt) // ts + 1)
        self.patchout = self._check_patchout(cfg.patchout, self.grid)
        self.proj = nn.Conv2d(1, cfg.dim, kernel_size=(kf, kt), stride=(fs, ts))
        self.prefix = 2 if cfg.pooling == "cls" else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if self.prefix else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if self.prefix else None
        F, T = self.grid
        self.num_tokens = F * T + self.prefix
        if cfg.axis_positions:
            self.freq_pos = nn.Parameter(torch.zeros(1, cfg.dim, F, 1))
            self.time_pos = nn.Parameter(torch.zeros(1, cfg.dim, 1, T))
            self.tok_pos = nn.Parameter(torch.zeros(1, self.prefix, cfg.dim)) if self.prefix else None
            self.pos_emb = None
        else:
            self.pos_emb = nn.Parameter(torch.zeros(1, self.num_tokens, cfg.dim))
        for p in self.parameters():
            if p.dim() > 1 and p is not self.proj.weight:
                nn.init.trunc_normal_(p, std=cfg.init_std)
        self.dropout = nn.Dropout(cfg.dropout)
        self.generator, self.kept = None, None

    @staticmethod
    def _check_patchout(patchout: list[int], grid: tuple[int, int]) -> tuple[int, int, int]:
        if not patchout:
            return 0, 0, 0
        if len(patchout) != 3 or min(patchout) < 0:
            raise ValueError(f"patchout is [frequency rows, time columns, random patches] >= 0, got {patchout}")
        s_f, s_t, u = patchout
        if s_f >= grid[0] or s_t >= grid[1] or u >= (grid[0] - s_f) * (grid[1] - s_t):
            raise ValueError(f"patchout {patchout} leaves no patch of the {grid[0]} x {grid[1]} grid; drop fewer")
        return s_f, s_t, u

    @property
    def train_grid(self) -> tuple[int, int] | None:
        """The grid of the patch tokens while training (``None``: unstructured patchout leaves a sequence)."""
        s_f, s_t, u = self.patchout
        return None if u else (self.grid[0] - s_f, self.grid[1] - s_t)

    def _keep(self, n: int, drop: int, device) -> Tensor:
        return torch.randperm(n, generator=self.generator).to(device)[: n - drop].sort().values

    def patches(self, spec: Tensor) -> Tensor:
        """``(B, frames, mel_bins)`` -> patch embeddings ``(B, dim, F', T')`` (no positions yet)."""
        if spec.dim() != 3 or tuple(spec.shape[1:]) != self.shape:
            raise ValueError(f"expected spectrograms of shape (batch, {self.shape[0]} frames, {self.shape[1]} mel "
                             f"bins), got {tuple(spec.shape)}; pad or cut the frames, or build the model with "
                             "matching frames / mel_bins")
        return self.proj(spec.to(self.proj.weight.dtype).transpose(1, 2).unsqueeze(1))

    def forward(self, spec: Tensor) -> tuple[Tensor, tuple[int, int] | None]:
        return self.assemble(self.patches(spec))

    def assemble(self, x: Tensor) -> tuple[Tensor, tuple[int, int] | None]:
        """Patch embeddings ``(B, dim, F', T')`` -> tokens: positions, patchout (training), prefix tokens."""
        B, D, F, T = x.shape
        if self.pos_emb is None:
            x = x + self.freq_pos + self.time_pos
        else:  # the patches' rows of the flat table, frequency-major
            x = x + self.pos_emb[:, self.prefix:].transpose(1, 2).reshape(1, D, F, T)
        grid = self.grid
        s_f, s_t, u = self.patchout
        if self.training and (s_f or s_t or u):  # after the positions: a kept patch keeps its own
            rows, cols = self._keep(F, s_f, x.device), self._keep(T, s_t, x.device)
            x, grid = x[:, :, rows][:, :, :, cols], (F - s_f, T - s_t)
            self.kept = (rows, cols, None)
        x = x.flatten(2).transpose(1, 2)  # (B, F'T', D), frequency-major
        if self.training and u:
            tokens = self._keep(x.shape[1], u, x.device)
            x, grid, self.kept = x[:, tokens], None, (*self.kept[:2], tokens)
        if self.prefix:
            pos = self.tok_pos if self.pos_emb is None else self.pos_emb[:, : self.prefix]
            prefix = torch.cat([self.cls_token, self.dist_token], dim=1) + pos
            x = torch.cat([prefix.expand(B, -1, -1), x], dim=1)
        return self.dropout(x), grid


class AST(TransformerBody):
    """Spectrogram classifier / feature extractor (see the module docstring).

    Config fields used: ``mel_bins``, ``frames``, ``patch_size`` / ``patch_shape``, ``patch_stride``, ``pooling``,
    ``dim``,
    ``num_layers``, ``num_heads``, ``mlp_dim``, ``norm_eps``, ``attention`` (+ options), ``num_classes``.

    Raises:
        ValueError: a spectrogram smaller than a patch, ``max_seq_len`` below the token count, inputs of the
            wrong shape.
        CapabilityError: at build time, a kernel that cannot run bidirectionally on the patch grid (with the two
            prefix tokens under ``pooling="cls"``), naming those that can.
    """

    causal = False
    reads = "spectrogram"  # the whole-example input it classifies (models.heads.PooledClassifier)

    def __init__(self, cfg: ModelConfig):
        embed = SpectrogramPatches(cfg)
        if cfg.max_seq_len < embed.num_tokens:
            raise ValueError(f"a {cfg.frames}-frame spectrogram is {embed.num_tokens} tokens here but max_seq_len="
                             f"{cfg.max_seq_len}; set max_seq_len={embed.num_tokens}")
        super().__init__(cfg, embed=embed)
        self.head = (nn.Sequential(nn.LayerNorm(cfg.dim, eps=cfg.norm_eps), nn.Linear(cfg.dim, cfg.num_classes))
                     if cfg.num_classes else None)
        init_weights(self, cfg)
        shells = [b.attn for b in self.blocks]
        check_prefix_tokens(shells, embed.num_tokens, embed.grid, "AST")
        if any(embed.patchout):
            self._check_patchout_grid(shells, embed)

    @property
    def grid(self) -> tuple[int, int]:
        """``(F', T')``: frequency rows x time columns of the patch grid."""
        return self.embed.grid

    @staticmethod
    def _check_patchout_grid(shells: list[nn.Module], embed: SpectrogramPatches) -> None:
        """Kernels must also run on the training tokens: the smaller grid, or a plain sequence after random drops."""
        grid = embed.train_grid
        if grid is None:
            caps = [(s.kernel.name, s.kernel.capabilities) for s in shells]
            grid_kernels = sorted({name for name, c in caps if c.requires_grid or c.grid_2d})
            if grid_kernels:  # they would attend in 1-D while training and in 2-D in eval
                raise CapabilityError(f"unstructured patchout leaves a sequence, not a grid: {grid_kernels} read the "
                                      "grid; drop rows and columns only (patchout [s_f, s_t, 0]) or use a kernel "
                                      "without a grid form (softmax ...)")
            return
        check_prefix_tokens(shells, grid[0] * grid[1] + embed.prefix, grid, "AST (patchout)")

    def forward(self, spec: Tensor) -> Tensor:
        x, grid = self.embed(spec)
        return self.encode(None, inputs_embeds=x, grid=grid)

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
        x, grid = self.embed(spec)
        return super().attention_maps(None, inputs_embeds=x, grid=grid, **kwargs)
