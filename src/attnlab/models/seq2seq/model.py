"""Encoder-decoder Transformer ("Attention Is All You Need", Vaswani et al. 2017), any attention kernel.

The encoder is the shared body (bidirectional); each decoder block adds cross-attention to the encoder's
output (the *memory*) between its causal self-attention and its MLP. Token embeddings (and absolute
positions) are shared by encoder, decoder and output head, as in the original model and T5. Every
positional encoding of the body works: learned / sinusoidal absolute positions, RoPE and ALiBi in the
self-attention, T5's relative buckets (Raffel et al. 2020) as a per-stack bias; cross-attention uses none.
BART's layout (Lewis et al. 2020) is post-norm with ``decoder_embeddings`` (the decoder's own position table and
embedding LayerNorm over the shared token table) and ``logits_bias``.

Shapes: ``src (B, S)`` and ``tgt (B, T)`` token ids -> logits ``(B, T, vocab)``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ...attention.cache import DenseKVCache, keys_after_update
from ...attention.context import AttentionContext
from ...attention.shell import MultiHeadAttention
from ...layers.mlp import build_mlp
from ...layers.norms import build_norm
from ...layers.positional import RotaryEmbedding
from ...native.linear import Linear
from ..config import ModelConfig
from ..transformer import Embeddings, TransformerBody, build_position_bias, init_weights


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
        """``x (B, T, dim)``, ``memory (M, S, dim)`` with ``M`` dividing ``B`` (``None`` once the cross cache is
        filled) -> ``(B, T, dim)``; target row ``i`` reads memory row ``i // (B // M)``."""
        self_cache, cross_cache = cache if cache is not None else (None, None)
        steps = (
            (self.self_norm, lambda h: self.self_attn(h, self_ctx, positions, self_cache)),
            (self.cross_norm, lambda h: self.cross(h, memory, cross_ctx, cross_cache)),
            (self.mlp_norm, self.mlp),
        )
        for norm, f in steps:
            x = x + f(norm(x)) if self.prenorm else norm(x + f(x))
        return x

    def cross(self, h: Tensor, memory: Tensor | None, ctx: AttentionContext, cache=None) -> Tensor:
        """Cross-attention of ``h (B, T, dim)`` to ``memory (M, S, dim)`` (or the cached memory). With ``M < B``
        (beam search: ``K = B / M`` hypotheses per source) the ``K`` rows of a source become ``K * T`` queries of
        its one memory row: the same result as repeating the memory, with its keys and values held once."""
        B, T, D = h.shape
        M = memory.shape[0] if memory is not None else cache.k.shape[0] if cache is not None and cache.filled else B
        if M == B:
            return self.cross_attn(h, ctx, cache=cache, memory=memory)
        if B % M:
            raise ValueError(f"{B} target rows cannot share a memory of {M} rows; give one memory row per target "
                             "row, or per group of consecutive target rows (B a multiple of the memory's rows)")
        return self.cross_attn(h.reshape(M, (B // M) * T, D), ctx, cache=cache, memory=memory).reshape(B, T, D)


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
        self.decoder_embed = Embeddings(cfg) if cfg.decoder_embeddings else None
        self.head = Linear(cfg.dim, cfg.vocab_size, bias=cfg.logits_bias)  # native: the few-row decoding kernel
        init_weights(self, cfg)
        if self.decoder_embed is not None:  # one token table for both stacks: only positions and norm are the decoder's
            self.decoder_embed.tok_emb = self.encoder.embed.tok_emb
        if cfg.logits_bias:
            nn.init.zeros_(self.head.bias)
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
        """``tgt (B, T)`` ids attending to ``memory (M, S, dim)`` -> logits ``(B, T, vocab)``.

        ``M`` is ``B``, or divides it: consecutive groups of ``B / M`` target rows share one memory row (beam
        search decodes ``K`` hypotheses per source without repeating the source); ``memory_key_padding_mask`` is
        ``(M, S)``. With ``cache`` (from :meth:`new_cache`) only the new target tokens are given; after the first
        call ``memory`` may be ``None`` (its keys and values are cached).

        Raises:
            ValueError: ``tgt`` not ``(B, T)``, longer than ``max_seq_len``, ``M`` not dividing ``B``, or no memory
                on the first call.
        """
        if tgt.dim() != 2:
            raise ValueError(f"expected target token ids of shape (batch, tokens), got {tuple(tgt.shape)}")
        T = tgt.shape[1]
        offset = cache[0][0].seen if cache is not None else 0
        positions = self.encoder.default_positions(tgt, offset)
        x = (self.decoder_embed or self.encoder.embed)(tgt, positions)
        S = keys_after_update(cache[0][0] if cache is not None else None, T)
        bias = self._self_bias(T, S)
        self_ctx = AttentionContext(causal=True, attn_bias=bias, positions=positions)
        cross_ctx = AttentionContext(key_padding_mask=memory_key_padding_mask)
        for i, block in enumerate(self.blocks):
            layer_cache = cache[i] if cache is not None else None
            x = block(x, memory, dataclasses.replace(self_ctx), cross_ctx, positions, layer_cache)
        x = self.final_norm(x)
        return self.head(x * self.cfg.logit_scale if self.cfg.logit_scale != 1.0 else x)

    def _self_bias(self, T: int, S: int) -> Tensor | None:
        """The decoder self-attention's ``(1, H, T, S)`` position bias (``None`` without one). It depends only on
        key - query offsets, so without gradients it is sliced from a table kept across decoding steps (rebuilt
        when the bias weights change) instead of being rebuilt at every step."""
        pb = self.position_bias
        if pb is None or torch.is_grad_enabled():
            return None if pb is None else pb(T, S)
        key = tuple((id(t), t._version, t.data_ptr()) for t in (*pb.parameters(), *pb.buffers()))
        table = self.__dict__.get("_bias_table")
        if table is None or table[0] != key or table[1].shape[-1] < S:
            n = max(S, 64 if table is None else 2 * table[1].shape[-1])
            table = self.__dict__["_bias_table"] = (key, pb(n, n))  # (1, H, n, n)
        return table[1][:, :, S - T:S, :S]

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
def reorder_cache(cache: list, index: Tensor, spares: dict | None = None) -> None:
    """Select batch rows ``index`` of every decoding cache in place (beam search keeps the surviving beams).

    ``index (B,)`` holds, for each new row, the old row it continues. Every tensor attribute of a cache whose
    first dimension is the batch is indexed (a dense KV cache over its filled positions only); a cache holding
    none is left alone (a cross cache not filled yet, or one holding a row per source that its beams share).
    ``spares``: a dict the caller keeps across steps; rows are then gathered into the buffers the previous step
    released instead of new tensors (no allocation, and no fresh pages to fault in, per step).
    """
    batch = index.shape[0]
    for layer in cache:
        for c in layer:
            filled = c.seen if isinstance(c, DenseKVCache) else None
            for name, value in list(vars(c).items()):
                if not (isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch):
                    continue
                spare = None if spares is None else spares.pop((id(c), name), None)
                if spare is None or spare.shape != value.shape or spare.dtype != value.dtype:
                    spare = torch.empty_like(value)
                rows = index.to(value.device)
                if filled is not None:  # (B, Hkv, max_len, Dh): positions past `seen` hold nothing yet
                    torch.index_select(value[:, :, :filled], 0, rows, out=spare[:, :, :filled])
                else:
                    torch.index_select(value, 0, rows, out=spare)
                setattr(c, name, spare)
                if spares is not None:
                    spares[(id(c), name)] = value
