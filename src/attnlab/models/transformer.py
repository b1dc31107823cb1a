"""The Transformer body shared by every family: embeddings, blocks and the block stack.

Blocks are composed from ready-made parts chosen by the builders below, not by flags inside the block: ``Block(attn, mlp, attn_norm, mlp_norm)``.
Pre-norm (GPT-2, Radford et al. 2019) is :class:`Block`; post-norm (Vaswani et al. 2017, BERT) is
:class:`PostNormBlock`. The builders below read a :class:`ModelConfig` and choose the parts.
"""

from __future__ import annotations

from collections.abc import Callable

import dataclasses
import math

import torch
from torch import Tensor, nn

from ..attention.cache import keys_after_update
from ..attention.context import AttentionContext
from ..attention.shell import MultiHeadAttention
from ..attention.stack import build_stack_hooks, link_kernels
from ..layers.embeddings import TokenEmbedding, check_token_ids
from ..layers.mlp import build_mlp
from ..layers.norms import build_norm
from ..layers.positional import (
    ALiBi,
    LearnedPositionalEmbedding,
    RelativePositionBias,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
)
from ..layers.residual import add_and_norm, run_residual_stack
from .config import ModelConfig


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``. ``(B, T, D) -> (B, T, D)``.

    It defers its final residual add into the next block's first norm (:mod:`attnlab.layers.residual`).
    """

    defers_residual = True

    def __init__(self, attn: MultiHeadAttention, mlp: nn.Module, attn_norm: nn.Module, mlp_norm: nn.Module):
        super().__init__()
        self.attn, self.mlp, self.attn_norm, self.mlp_norm = attn, mlp, attn_norm, mlp_norm

    def forward(self, x: Tensor, ctx: AttentionContext, positions=None, cache=None) -> Tensor:
        x, branch = self.forward_pending(x, None, ctx, positions, cache)
        return x + branch

    def forward_pending(self, x: Tensor, pending: Tensor | None, ctx: AttentionContext, positions=None,
                        cache=None) -> tuple[Tensor, Tensor]:
        """The block on ``x + pending`` (``pending``: the previous block's MLP output, not yet added), returning
        ``(residual, mlp output)`` unsummed: each residual add then happens inside the following norm, one
        native pass under bf16 autocast on CPU (:func:`attnlab.layers.residual.add_and_norm`)."""
        x, normed = add_and_norm(self.attn_norm, x, pending)
        x, normed = add_and_norm(self.mlp_norm, x, self.attn(normed, ctx, positions, cache))
        return x, self.mlp(normed)


class PostNormBlock(Block):
    """Post-norm residual block (BERT): ``norm(x + attn(x))`` then ``norm(x + mlp(x))``."""

    defers_residual = False

    def forward(self, x: Tensor, ctx: AttentionContext, positions=None, cache=None) -> Tensor:
        x = self.attn_norm(x + self.attn(x, ctx, positions, cache))
        return self.mlp_norm(x + self.mlp(x))


class Embeddings(nn.Module):
    """Token (+ absolute position) (+ segment) embeddings, optional LayerNorm, dropout -> ``(B, T, D)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tok_emb = TokenEmbedding(cfg.vocab_size, cfg.dim, cfg.init_std)
        self.pos_emb = {
            "learned": lambda: LearnedPositionalEmbedding(cfg.max_seq_len, cfg.dim),
            "sinusoidal": lambda: SinusoidalPositionalEmbedding(cfg.max_seq_len, cfg.dim),
        }.get(cfg.position, lambda: None)()
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.dim) if cfg.type_vocab_size else None
        self.embed_norm = build_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.bias) if cfg.embed_norm else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, ids: Tensor, positions: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        x = self.tok_emb(ids)  # (B, T, D)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        if self.type_emb is not None:
            x = x + self.type_emb(torch.zeros_like(ids) if token_type_ids is None else token_type_ids)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.dropout(x)


def build_position_bias(cfg: ModelConfig, causal: bool) -> nn.Module | None:
    """ALiBi or T5 relative bias module producing ``(1, H, T, S)``; ``None`` for other encodings."""
    if cfg.position == "alibi":
        return ALiBi(cfg.num_heads)
    if cfg.position == "relative":
        return RelativePositionBias(cfg.num_heads, cfg.relative_buckets, cfg.relative_max_distance, not causal)
    return None


def build_blocks(cfg: ModelConfig) -> nn.ModuleList:
    """One block per layer; layer ``i`` gets attention ``cfg.layer_attention(i)``."""
    head_dim = cfg.head_dim or cfg.dim // cfg.num_heads
    rope = RotaryEmbedding(head_dim, cfg.rope_base) if cfg.position == "rope" else None
    block_cls = Block if cfg.prenorm else PostNormBlock
    blocks = []
    for i in range(cfg.num_layers):
        name, opts = cfg.layer_attention(i)
        attn = MultiHeadAttention(
            cfg.dim, cfg.num_heads, cfg.num_kv_heads, kernel=name, kernel_options=opts, head_dim=cfg.head_dim,
            rope=rope, bias=cfg.bias, dropout=cfg.dropout, max_seq_len=cfg.max_seq_len,
        )
        mlp = build_mlp(cfg.mlp, cfg.dim, cfg.resolved_mlp_dim, cfg.activation, cfg.bias, cfg.dropout)
        # pre-norm: the norms feed only the attention and MLP input projections
        norms = [build_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.bias, feeds_matmul=cfg.prenorm) for _ in range(2)]
        blocks.append(block_cls(attn, mlp, *norms))
    link_kernels([b.attn.kernel for b in blocks])  # cross-layer sharing (e.g. universal KArAt)
    return nn.ModuleList(blocks)


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2L)."""
    for name, p in model.named_parameters():
        if p.dim() >= 2 and ("proj" in name or "fc_" in name or "gate" in name or ".up." in name or "head" in name):
            std = cfg.init_std / math.sqrt(2 * cfg.num_layers) if name.endswith(("out_proj.weight", "fc_out.weight")) else cfg.init_std
            nn.init.normal_(p, std=std)
        elif name.endswith("bias") and "norm" not in name:
            nn.init.zeros_(p)


class TransformerBody(nn.Module):
    """Embeddings -> blocks -> final norm, with masks, positions and caches handled in one place.

    Subclasses (GPT, Encoder) set ``causal`` and add heads.
    """

    causal = False

    def __init__(self, cfg: ModelConfig, embed: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg) if embed is None else embed  # ViT passes its patch embedding
        self.position_bias = build_position_bias(cfg, self.causal)
        self.blocks = build_blocks(cfg)
        self.final_norm = build_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.bias) if cfg.prenorm else nn.Identity()
        needs = dict(causal=self.causal, bidirectional=not self.causal, attn_bias=self.position_bias is not None)
        for block in self.blocks:
            block.attn.kernel.capabilities.require(block.attn.kernel.name, **needs)
        # state some kernels keep across the whole stack (attnlab.attention.stack)
        self.stack_hooks = build_stack_hooks([b.attn.kernel for b in self.blocks], dim=cfg.dim,
                                             vocab_size=cfg.vocab_size, max_seq_len=cfg.max_seq_len)
        for hook in self.stack_hooks:
            hook.check_embedding(self.embed)

    def default_positions(self, ids: Tensor, offset: int) -> Tensor:
        T = ids.shape[1]
        if offset + T > self.cfg.max_seq_len:
            raise ValueError(
                f"input of {offset + T} tokens is longer than max_seq_len={self.cfg.max_seq_len}; "
                f"truncate the input to {self.cfg.max_seq_len} tokens or build the model with a larger max_seq_len"
            )
        return torch.arange(offset, offset + T, device=ids.device)  # (T,)

    def encode(self, ids: Tensor, *, key_padding_mask=None, document_ids=None, positions=None,
               token_type_ids=None, grid=None, cache=None, inputs_embeds=None) -> Tensor:
        """``ids (B, T)`` -> hidden states ``(B, T, D)`` after the final norm.

        ``inputs_embeds (B, T, D)`` replaces ``ids`` when the input is embedded elsewhere (ViT patches).

        Raises:
            TypeError: ``ids`` is not an integer tensor (names the dtype).
            ValueError: ``ids`` not ``(B, T)``, longer than ``max_seq_len``, or outside the vocabulary.
        """
        if inputs_embeds is None:
            check_token_ids(ids)
        if inputs_embeds is None and ids.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, tokens), got {tuple(ids.shape)}")
        offset = cache[0].seen if cache is not None else 0
        if positions is None:
            positions = self.default_positions(ids if inputs_embeds is None else inputs_embeds, offset)
        elif int(positions.max()) >= self.cfg.max_seq_len:
            raise ValueError(f"position {int(positions.max())} >= max_seq_len={self.cfg.max_seq_len}")
        x = self.embed(ids, positions, token_type_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]
        bias = None
        if self.position_bias is not None:
            bias = self.position_bias(T, keys_after_update(cache[0] if cache else None, T))
        B = x.shape[0]
        ctx = AttentionContext(causal=self.causal, key_padding_mask=key_padding_mask, document_ids=document_ids,
                               attn_bias=bias, grid=grid, positions=positions)
        for hook in self.stack_hooks:  # may append batch rows, dropped after the last block
            x, positions, ctx = hook.enter(self.embed, x, positions, ctx)
        ctx = dataclasses.replace(ctx, embeddings=x)  # kernels projecting Q/K from the static embeddings read it
        biases: dict[int, Tensor] = {}  # by key count: layers' caches can differ in length (rolling windows)

        def layer_args(i: int) -> tuple:
            layer_ctx = dataclasses.replace(ctx)  # one per layer: the shell records the layer's cache in it
            if cache is not None and self.position_bias is not None:
                S = keys_after_update(cache[i], T)
                if S not in biases:
                    biases[S] = self.position_bias(T, S)
                layer_ctx.attn_bias = biases[S]
            return layer_ctx, positions, cache[i] if cache is not None else None

        x = run_residual_stack(self.blocks, x, layer_args)
        return self.final_norm(x[:B])

    def attention_maps(self, ids: Tensor, **kwargs) -> list[Tensor]:
        """Per-layer ``(B, H, T, S)`` attention maps, recomputed through the reference path."""
        return collect_attention_maps([b.attn for b in self.blocks], lambda: self.encode(ids, **kwargs))

    def new_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> list:
        """One decoding cache per layer (dense, or bounded for kernels such as sliding_window)."""
        max_len = max_len or self.cfg.max_seq_len
        for block in self.blocks:
            block.attn.kernel.capabilities.require(block.attn.kernel.name, kv_cache=True)
        return [b.attn.new_cache(batch_size, max_len, device, dtype) for b in self.blocks]

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.tok_emb.weight.numel()
        return n


def collect_attention_maps(shells: list[nn.Module], run: Callable[[], object]) -> list[Tensor]:
    """The ``(B, H, T, S)`` map of every kernel call of ``shells`` (attention shells, or any module holding its
    kernel as ``.kernel``, e.g. CvT's convolutional attention) while ``run()`` runs without gradients, each
    recomputed through its kernel's reference path from the q, k, v the kernel was given, in call order."""
    maps: list[Tensor] = []

    def hook(kernel, args, kwargs, output):
        q, k, v, ctx = kernel_call(args, kwargs)
        w = kernel.attention_weights(q, k, v, ctx)
        main = w.shape[0] if ctx is None or ctx.num_main_rows is None else ctx.num_main_rows
        maps.append(w[:main])  # without rows a stack hook appended

    kernels = list({id(s.kernel): s.kernel for s in shells}.values())  # a kernel shared by shells hooks once
    hooks = [kernel.register_forward_hook(hook, with_kwargs=True) for kernel in kernels]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return maps


def kernel_call(args: tuple, kwargs: dict) -> tuple[Tensor, Tensor, Tensor, object]:
    """``(q, k, v, ctx)`` of an attention kernel's ``forward(q, k, v, ctx=None)`` call, as a forward hook sees it."""
    q, k, v = args[:3]
    return q, k, v, args[3] if len(args) > 3 else kwargs.get("ctx")
