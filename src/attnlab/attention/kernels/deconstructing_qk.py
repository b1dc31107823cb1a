"""Deconstructing Attention: variants relaxing sequence dependency and current-QK.

Xue, Moosavi, Aletras 2025, "Deconstructing Attention: Investigating Design Principles for Effective
Language Modeling" (arXiv 2510.11602). All three are softmax attention whose queries and keys come
from somewhere other than the current layer's hidden state; values always come from it.

* ``random_qk`` (RndEmbQK): a fixed random embedding stream ``eps ~ N(0, sigma^2)`` of shape
  ``(max_seq_len, dim)`` runs through the **same** Transformer stack in parallel; at layer ``l``
  ``Q, K = X_l W_{Q,K}`` from that stream -> input-independent attention maps.
* ``fixed_seq_qk`` (FixedSeqQK): the same with the stream ``Emb(t_s)`` of a fixed token sequence.
* ``static_emb_qk`` (StaticEmbQK): ``Q, K = e W_{Q,K}`` with ``e`` the static input embeddings of the
  actual sequence -> input-dependent but not contextualised.

How the stream reaches the kernel: the two kernels declare a stack hook (:class:`QKStreams`, see
:mod:`attnlab.attention.stack`) that appends one extra batch row per distinct stream before the first
block; those rows run ordinary attention on themselves, and a ``random_qk``/``fixed_seq_qk`` layer gives
every real row the stream row's queries and keys. The context carries ``qk_stream_rows = {stream_key:
row}`` and ``num_main_rows``; the model drops the stream rows after its last block.
Called outside such a model (no stream in the context), the two kernels fall back to their own fixed
random queries and keys ``(H, max_seq_len, Dh)``: still input-independent, but not passed through a stack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import AttentionKernel
from ..capabilities import Capabilities, CapabilityError
from ..context import AttentionContext
from ..engines.gqa_groups import sdpa
from ..masks import context_mask
from ..reference import expand_kv_heads, reference_attention
from ..registry import register_attention
from ..stack import StackHook, with_rows


class _StreamQK(AttentionKernel):
    """Softmax attention with queries/keys from a fixed stream row (see the module docstring)."""

    capabilities = Capabilities(kv_cache=False, exact=False, complexity="O(N^2)")
    stream_kind = "?"

    def __init__(self, seed: int = 0, num_heads: int = 4, num_kv_heads: int | None = None, head_dim: int = 16,
                 max_seq_len: int = 256, scale: float | None = None):
        super().__init__(scale=scale)
        self.seed, self.max_seq_len = seed, max_seq_len
        gen = torch.Generator().manual_seed(seed)
        hkv = num_kv_heads or num_heads
        # standalone fallback only: fixed random queries and keys (non-persistent, rebuilt from the seed)
        self.register_buffer("q_fixed", torch.randn(num_heads, max_seq_len, head_dim, generator=gen), persistent=False)
        self.register_buffer("k_fixed", torch.randn(hkv, max_seq_len, head_dim, generator=gen), persistent=False)

    @property
    def qk_stream_key(self) -> tuple:
        """Identifies the stream this layer reads; layers with equal keys share one stream row."""
        raise NotImplementedError

    @classmethod
    def stack_hook(cls, kernels: list["_StreamQK"], *, dim: int, vocab_size: int, max_seq_len: int) -> "QKStreams":
        """One :class:`QKStreams` for every stream kernel of a model (both classes share this hook)."""
        keys = list(dict.fromkeys(k.qk_stream_key for k in kernels))
        names = tuple(dict.fromkeys(k.name for k in kernels))
        return QKStreams(keys, dim, vocab_size, max_seq_len, kernel_names=names)

    def stream_qk(self, q: Tensor, k: Tensor, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
        """Queries ``(B, H, T, Dh)`` and keys ``(B, Hkv, S, Dh)`` to use for every batch row."""
        rows = ctx.qk_stream_rows
        B, T, S = q.shape[0], q.shape[2], k.shape[2]
        if self.qk_stream_key in rows:
            n, r = ctx.num_main_rows, rows[self.qk_stream_key]
            qs = torch.cat([q[r : r + 1].expand(n, -1, -1, -1), q[n:]])  # real rows <- stream row's queries
            ks = torch.cat([k[r : r + 1].expand(n, -1, -1, -1), k[n:]])
            return qs, ks
        if S > self.max_seq_len or k.shape[1] != self.k_fixed.shape[0] or q.shape[1] != self.q_fixed.shape[0]:
            raise ValueError(
                f"{self.name}: standalone fallback holds {self.q_fixed.shape[0]} query / {self.k_fixed.shape[0]} "
                f"kv heads for {self.max_seq_len} positions; got q {tuple(q.shape)}, k {tuple(k.shape)}"
            )
        qs = self.q_fixed[None, :, S - T : S].to(q.dtype).expand(B, -1, -1, -1)  # bottom-right aligned
        ks = self.k_fixed[None, :, :S].to(k.dtype).expand(B, -1, -1, -1)
        return qs, ks

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        qs, ks = self.stream_qk(q, k, ctx)
        H = q.shape[1]
        keep = context_mask(ctx, q.shape[2], k.shape[2], q.device)  # pad keys masked anyway [choice]
        return sdpa(qs, expand_kv_heads(ks, H), expand_kv_heads(v, H), keep, ctx.attn_bias, self.softmax_scale(q.shape[-1]))

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        qs, ks = self.stream_qk(q, k, ctx)
        keep = context_mask(ctx, q.shape[2], k.shape[2], q.device)
        return reference_attention(qs, ks, v, keep=keep, bias=ctx.attn_bias, scale=self.softmax_scale(q.shape[-1]))[1]


@register_attention("random_qk")
class RandomEmbeddingQK(_StreamQK):
    """RndEmbQK (Xue et al. 2025): queries/keys from a fixed random-embedding stream through the stack.

    ``eps ~ N(0, sigma^2 I)``, ``(max_seq_len, dim)``, a non-trainable buffer drawn from ``seed`` [choice:
    the paper pins neither trainability nor sigma]. Maps are identical for every input.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)``; ``S <= max_seq_len``.

    Args:
        sigma: std of ``eps`` (default 1). seed: seed of ``eps`` (and of the standalone fallback).
        num_heads, num_kv_heads, head_dim, max_seq_len: structural (the shell fills them in).

    Raises: ValueError when the fallback's sizes do not fit the call.
    """

    stream_kind = "random"

    def __init__(self, sigma: float = 1.0, seed: int = 0, num_heads: int = 4, num_kv_heads: int | None = None,
                 head_dim: int = 16, max_seq_len: int = 256, scale: float | None = None):
        super().__init__(seed, num_heads, num_kv_heads, head_dim, max_seq_len, scale)
        if sigma <= 0:
            raise ValueError(f"random_qk: sigma must be > 0, got {sigma}")
        self.sigma = sigma

    @property
    def qk_stream_key(self) -> tuple:
        return ("random", self.seed, float(self.sigma))


@register_attention("fixed_seq_qk")
class FixedSequenceQK(_StreamQK):
    """FixedSeqQK (Xue et al. 2025): queries/keys from the stream ``Emb(t_s)`` of a fixed token sequence.

    The paper uses the first 2048 tokens of FineWeb-10BT; we cannot ship that, so ``t_s`` is ``tokens``
    when given, else a seeded uniform draw over the vocabulary [choice].

    Shapes: as :class:`RandomEmbeddingQK`. Args: tokens: the fixed token ids (at least the model's
    ``max_seq_len`` of them). seed: seed of the draw. Structural args as above.

    Raises: ValueError when ``tokens`` is too short or outside the vocabulary (at model build).
    """

    stream_kind = "fixed_seq"

    def __init__(self, tokens: list[int] | None = None, seed: int = 0, num_heads: int = 4,
                 num_kv_heads: int | None = None, head_dim: int = 16, max_seq_len: int = 256,
                 scale: float | None = None):
        super().__init__(seed, num_heads, num_kv_heads, head_dim, max_seq_len, scale)
        self.tokens = None if tokens is None else [int(t) for t in tokens]

    @property
    def qk_stream_key(self) -> tuple:
        return ("fixed_seq", self.seed, None if self.tokens is None else tuple(self.tokens))


@register_attention("static_emb_qk")
class StaticEmbeddingQK(AttentionKernel):
    """StaticEmbQK (Xue et al. 2025): ``Q, K = e W_{Q,K}`` with ``e`` the sequence's static input embeddings.

    The shell asks :meth:`qk_input` for the tensor to project queries and keys from; attnlab models
    put the embedding-layer output in ``ctx.embeddings`` ``(B, T, dim)``. [choice] It is
    normalised without parameters (``layer_norm``, no affine) like the pre-norm input of other layers,
    since raw embeddings (std 0.02 at init) would give near-zero logits. Without embeddings in the
    context (a bare kernel call) it is plain softmax attention on the given q, k.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)``.
    Args: normalize: apply the parameter-free norm (default True). scale: default ``1/sqrt(Dh)``.
    """

    capabilities = Capabilities(exact=False, complexity="O(N^2)")

    def __init__(self, normalize: bool = True, scale: float | None = None):
        super().__init__(scale=scale)
        self.normalize = normalize

    def qk_input(self, x: Tensor, ctx: AttentionContext | None) -> Tensor | None:
        e = None if ctx is None else ctx.embeddings
        if e is None:
            return None
        if e.shape != x.shape:
            raise ValueError(f"static_emb_qk: embeddings {tuple(e.shape)} do not match the layer input {tuple(x.shape)}")
        return F.layer_norm(e, e.shape[-1:]) if self.normalize else e

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        H = q.shape[1]
        keep = context_mask(ctx, q.shape[2], k.shape[2], q.device)
        return sdpa(q, expand_kv_heads(k, H), expand_kv_heads(v, H), keep, ctx.attn_bias, self.softmax_scale(q.shape[-1]))


class QKStreams(StackHook):
    """The stream inputs of one model: ``eps_i (max_seq_len, dim)`` buffers or fixed token ids.

    Buffers are non-persistent: they are rebuilt from the kernels' options (seed, sigma, tokens), so
    checkpoints of these models have exactly the keys of a standard model.

    Args:
        keys: the distinct ``qk_stream_key`` of the model's kernels, in layer order.
        dim, vocab_size, max_seq_len: model sizes.

    Raises:
        ValueError: fixed tokens shorter than ``max_seq_len`` or outside the vocabulary.
    """

    def __init__(self, keys: list[tuple], dim: int, vocab_size: int, max_seq_len: int,
                 kernel_names: tuple[str, ...] = ()):
        super().__init__()
        self.keys = list(keys)
        self.kernel_names = kernel_names
        for i, key in enumerate(self.keys):
            kind, seed = key[0], key[1]
            gen = torch.Generator().manual_seed(seed)
            if kind == "random":
                self.register_buffer(f"stream_{i}", torch.randn(max_seq_len, dim, generator=gen) * key[2], persistent=False)
            elif key[2] is None:
                self.register_buffer(f"stream_{i}", torch.randint(0, vocab_size, (max_seq_len,), generator=gen), persistent=False)
            else:
                tokens = torch.tensor(key[2], dtype=torch.long)
                if tokens.numel() < max_seq_len or int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
                    raise ValueError(
                        f"fixed_seq_qk tokens must be >= max_seq_len={max_seq_len} ids in [0, {vocab_size}), "
                        f"got {tokens.numel()} ids in [{int(tokens.min())}, {int(tokens.max())}]"
                    )
                self.register_buffer(f"stream_{i}", tokens[:max_seq_len].clone(), persistent=False)

    def check_embedding(self, embed: nn.Module) -> None:
        """A fixed token sequence needs a token-embedding table (``embed.tok_emb``)."""
        if any(key[0] != "random" for key in self.keys) and not hasattr(embed, "tok_emb"):
            raise CapabilityError(
                f"fixed_seq_qk takes queries/keys from a fixed token sequence, but this model embeds its input "
                f"with {type(embed).__name__} (no token table: image patches, real-valued inputs); use random_qk"
            )

    def stream_inputs(self, embed: nn.Module, positions: Tensor) -> Tensor:
        """``(num_streams, T, dim)`` stream inputs at ``positions (T,)``."""
        rows = []
        for i, key in enumerate(self.keys):
            src = getattr(self, f"stream_{i}")
            if key[0] == "random":
                rows.append(src[positions])  # (T, dim): eps replaces the whole embedding output
            else:
                rows.append(embed(src[positions][None], positions)[0])  # Emb(t_s): token + position
        return torch.stack(rows)

    def enter(self, embed: nn.Module, x: Tensor, positions: Tensor, ctx: AttentionContext
              ) -> tuple[Tensor, Tensor, AttentionContext]:
        """Append one row per stream: ``x (B + n, T, D)``, positions and masks extended for those rows."""
        B, T, _ = x.shape
        pos_1d = positions if positions.dim() == 1 else positions[0]
        streams = self.stream_inputs(embed, pos_1d).to(x.dtype)  # (n, T, D)
        n = streams.shape[0]
        if positions.dim() == 2:
            positions = torch.cat([positions, pos_1d[None].expand(n, -1)])
        kpm, doc = ctx.key_padding_mask, ctx.document_ids
        if kpm is not None:
            kpm = torch.cat([kpm, kpm.new_ones(n, kpm.shape[1])])
        if doc is not None:
            doc = torch.cat([doc, doc.new_zeros(n, doc.shape[1])])
        rows = {**ctx.qk_stream_rows, **{key: B + i for i, key in enumerate(self.keys)}}
        ctx = with_rows(ctx, B, key_padding_mask=kpm, document_ids=doc, positions=positions, qk_stream_rows=rows)
        return torch.cat([x, streams]), positions, ctx
