"""Encoder-decoder Transformer ("Attention Is All You Need", Vaswani et al. 2017), any attention kernel.

The encoder is the shared body (bidirectional); each decoder block adds cross-attention to the encoder's
output (the *memory*) between its causal self-attention and its MLP. Token embeddings (and absolute
positions) are shared by encoder, decoder and output head, as in the original model and T5. Every
positional encoding of the body works: learned / sinusoidal absolute positions, RoPE and ALiBi in the
self-attention, T5's relative buckets (Raffel et al. 2020) as a per-stack bias; cross-attention uses none.

Shapes: ``src (B, S)`` and ``tgt (B, T)`` token ids -> logits ``(B, T, vocab)``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ...attention.cache import keys_after_update
from ...attention.context import AttentionContext
from ...attention.shell import MultiHeadAttention
from ...layers.mlp import build_mlp
from ...layers.norms import build_norm
from ...layers.positional import RotaryEmbedding
from ..config import ModelConfig
from ..transformer import TransformerBody, build_position_bias, init_weights


class Seq2SeqEncoder(TransformerBody):
    """The bidirectional encoder stack: ``src (B, S)`` -> memory ``(B, S, dim)``."""

    causal = False


class DecoderBlock(nn.Module):
    """Self-attention (causal), cross-attention to the memory, MLP; pre-norm (``x + f(norm(x))``) or post-norm
    (``norm(x + f(x))``). ``(B, T, dim) -> (B, T, dim)``."""

    def __init__(self, self_attn: MultiHeadAttention, cross_attn: MultiHeadAttention, mlp: nn.Module,
                 norms: list[nn.Module], prenorm: bool):
        super().__init__()
        self.self_attn, self.cross_attn, self.mlp = self_attn, cross_attn, mlp
        self.self_norm, self.cross_norm, self.mlp_norm = norms
        self.prenorm = prenorm

    def forward(self, x: Tensor, memory: Tensor | None, self_ctx: AttentionContext, cross_ctx: AttentionContext,
                positions: Tensor, cache: tuple | None = None) -> Tensor:
        self_cache, cross_cache = cache if cache is not None else (None, None)
        steps = (
            (self.self_norm, lambda h: self.self_attn(h, self_ctx, positions, self_cache)),
            (self.cross_norm, lambda h: self.cross_attn(h, cross_ctx, cache=cross_cache, memory=memory)),
            (self.mlp_norm, self.mlp),
        )
        for norm, f in steps:
            x = x + f(norm(x)) if self.prenorm else norm(x + f(x))
        return x


class EncoderDecoder(nn.Module):
    """Sequence-to-sequence model: ``forward(src, tgt)`` -> next-token logits of ``tgt`` ``(B, T, vocab)``.

    ``cfg.attention`` (one name, or a per-layer schedule) sets the encoder's self-attention and the decoder's
    (causal) self-attention; ``cfg.cross_attention`` the kernel every cross-attention layer uses.

    Raises:
        CapabilityError: at build time, an encoder kernel that is not bidirectional, a decoder kernel that
            is not causal, or a cross-attention kernel without ``cross_attention`` (naming those that can).
        ValueError: inputs of the wrong shape or longer than ``max_seq_len``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Seq2SeqEncoder(cfg)
        self.position_bias = build_position_bias(cfg, causal=True)
        self.blocks = nn.ModuleList(self._block(cfg, i) for i in range(cfg.num_decoder_layers or cfg.num_layers))
        self.final_norm = build_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.bias) if cfg.prenorm else nn.Identity()
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        init_weights(self, cfg)
        if cfg.tie_weights:
            self.head.weight = self.encoder.embed.tok_emb.weight
        needs = dict(causal=True, attn_bias=self.position_bias is not None)
        for block in self.blocks:
            block.self_attn.kernel.capabilities.require(block.self_attn.kernel.name, **needs)
            block.cross_attn.kernel.capabilities.require(block.cross_attn.kernel.name, cross_attention=True)

    @staticmethod
    def _block(cfg: ModelConfig, i: int) -> DecoderBlock:
        head_dim = cfg.head_dim or cfg.dim // cfg.num_heads
        rope = RotaryEmbedding(head_dim, cfg.rope_base) if cfg.position == "rope" else None
        name, opts = cfg.layer_attention(i)
        shell = dict(head_dim=cfg.head_dim, bias=cfg.bias, dropout=cfg.dropout, max_seq_len=cfg.max_seq_len)
        self_attn = MultiHeadAttention(cfg.dim, cfg.num_heads, cfg.num_kv_heads, kernel=name, kernel_options=opts,
                                       rope=rope, **shell)
        cross_attn = MultiHeadAttention(cfg.dim, cfg.num_heads, cfg.num_kv_heads, kernel=cfg.cross_attention,
                                        kernel_options=dict(cfg.cross_attention_options), **shell)
        mlp = build_mlp(cfg.mlp, cfg.dim, cfg.resolved_mlp_dim, cfg.activation, cfg.bias, cfg.dropout)
        norms = [build_norm(cfg.norm, cfg.dim, cfg.norm_eps, cfg.bias) for _ in range(3)]
        return DecoderBlock(self_attn, cross_attn, mlp, norms, cfg.prenorm)

    def encode(self, src: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor:
        """``src (B, S)`` ids (``src_key_padding_mask (B, S)``, True = real token) -> memory ``(B, S, dim)``."""
        return self.encoder.encode(src, key_padding_mask=src_key_padding_mask)

    def decode(self, tgt: Tensor, memory: Tensor | None, memory_key_padding_mask: Tensor | None = None,
               cache: list | None = None) -> Tensor:
        """``tgt (B, T)`` ids attending to ``memory (B, S, dim)`` -> logits ``(B, T, vocab)``.

        With ``cache`` (from :meth:`new_cache`) only the new target tokens are given; after the first call
        ``memory`` may be ``None`` (its keys and values are cached).
        """
        if tgt.dim() != 2:
            raise ValueError(f"expected target token ids of shape (batch, tokens), got {tuple(tgt.shape)}")
        T = tgt.shape[1]
        offset = cache[0][0].seen if cache is not None else 0
        positions = self.encoder.default_positions(tgt, offset)
        x = self.encoder.embed(tgt, positions)
        S = keys_after_update(cache[0][0] if cache is not None else None, T)
        bias = self.position_bias(T, S) if self.position_bias is not None else None
        self_ctx = AttentionContext(causal=True, attn_bias=bias, positions=positions)
        cross_ctx = AttentionContext(key_padding_mask=memory_key_padding_mask)
        for i, block in enumerate(self.blocks):
            layer_cache = cache[i] if cache is not None else None
            x = block(x, memory, dataclasses.replace(self_ctx), cross_ctx, positions, layer_cache)
        x = self.final_norm(x)
        return self.head(x * self.cfg.logit_scale if self.cfg.logit_scale != 1.0 else x)

    def forward(self, src: Tensor, tgt: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: ``src (B, S)``, ``tgt (B, T)`` (the decoder's input) -> logits ``(B, T, vocab)``."""
        memory = self.encode(src, src_key_padding_mask)
        return self.decode(tgt, memory, src_key_padding_mask)

    def new_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> list:
        """Per decoder layer: ``(self-attention cache, cross-attention cache)`` for incremental decoding."""
        max_len = max_len or self.cfg.max_seq_len
        for block in self.blocks:
            block.self_attn.kernel.capabilities.require(block.self_attn.kernel.name, kv_cache=True)
        return [(b.self_attn.new_cache(batch_size, max_len, device, dtype), b.cross_attn.new_cross_cache())
                for b in self.blocks]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@torch.no_grad()
def reorder_cache(cache: list, index: Tensor) -> None:
    """Select batch rows ``index`` of every decoding cache in place (beam search keeps the surviving beams).

    ``index (B,)`` holds, for each new row, the old row it continues. Every tensor attribute of a cache whose
    first dimension is the batch is indexed; a cache holding none (a cross cache not filled yet) is left alone.
    """
    batch = index.shape[0]
    for layer in cache:
        for c in layer:
            for name, value in vars(c).items():
                if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
                    setattr(c, name, value.index_select(0, index.to(value.device)))
