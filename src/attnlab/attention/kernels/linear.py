"""Simplified linear attention (SLAB) and its causal, recurrent form.

Han, Wang, Guo, Chen, Wang, "SLAB: Efficient Transformers with Simplified Linear Attention and
Progressive Re-parameterized Batch Normalization" (ICML 2024). Causal prefix-sum form: Katharopoulos et al., "Transformers are RNNs" (ICML 2020).

Per head, with ``phi = ReLU`` and a learnable key position term ``P`` (zero-initialised)::

    phi_q = phi(q),  phi_k = phi(k + P)
    out_i = phi_q_i (sum_j phi_k_j^T v_j) / (phi_q_i . sum_j phi_k_j + 1e-6)  +  DWC(v)_i

with no ``1/sqrt(Dh)`` scaling (the normaliser makes it unnecessary) and a depth-wise convolution over
the values whose ``Dh`` channels are shared by all heads (1-D over the sequence, or k x k over
``ctx.grid`` with ``conv_2d=True``). Causal: the sums run over ``j <= i`` and the convolution is causal.

* Training (causal) uses a chunked parallel form (:class:`~.linear_scan.CausalLinearScan`, with its own
  backward pass): quadratic inside chunks of ``chunk_size`` tokens, per-chunk ``(Dh, Dh + 1)`` states
  between them, all chunks at once in batched matmuls; nothing ``N x N``, memory ``O(N * (C + Dh))``.
* Decoding keeps an O(1)-size recurrent state: :meth:`LinearAttention.new_cache` returns a
  :class:`LinearAttentionCache` (state ``(Dh, Dh) + (Dh,)`` per KV head plus the last ``k-1`` values for
  the causal convolution) that does not grow with the generated length.
* Key padding zeroes the padded keys' features and values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import AttentionKernel
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..engines.linear_scan import CausalLinearScan
from ..masks import causal_mask
from ..reference import expand_kv_heads
from ..registry import register_attention

FEATURE_MAPS = {"relu": F.relu, "elu1": lambda x: F.elu(x) + 1.0}


class LinearAttentionCache:
    """Recurrent decoding state of :class:`LinearAttention` (constant size; fp32).

    ``update(k_new, v_new)`` only counts the new tokens and returns them unchanged: the kernel reads
    the state ``(B, Hkv, Dh, Dh + 1)`` (``sum phi_k^T v`` next to the normaliser ``sum phi_k``) and the
    convolution's left context ``tail (B, Hkv, conv_kernel-1, Dh)`` from ``ctx.cache`` and writes the
    advanced state back.
    """

    def __init__(self, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int | None,
                 conv_taps: int, device=None):
        B, h, D = batch_size, num_kv_heads, head_dim
        self.state = torch.zeros(B, h, D, D + 1, device=device)  # [sum phi_k^T v | sum phi_k]
        self.tail = torch.zeros(B, h, conv_taps, D, device=device)
        self.max_len = max_len
        self.seen = 0

    def update(self, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        t = k_new.shape[2]
        if self.max_len is not None and self.seen + t > self.max_len:
            raise ValueError(
                f"linear-attention cache: {self.seen} seen + {t} new tokens > max_len={self.max_len}; "
                "create the cache with a larger max_len (at most the model's max_seq_len)"
            )
        self.seen += t
        return k_new, v_new

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.state, self.tail))


@register_attention("linear")
class LinearAttention(AttentionKernel):
    """SLAB simplified linear attention; causal form with chunked training and recurrent decoding.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)``.

    Args:
        feature_map: ``"relu"`` (SLAB) or ``"elu1"`` (``elu(x) + 1``, Katharopoulos et al.).
        conv_kernel: depth-wise conv size on V (SLAB: 5); 0 disables it. Must be odd when non-zero.
        conv_2d: ``k x k`` convolution over ``ctx.grid`` (SLAB's vision form; bidirectional only).
        key_pos: learnable key position term ``P (Hkv, max_seq_len, Dh)`` added before ``phi`` (needs
            ``max_seq_len``; off when the kernel is built without it).
        chunk_size: chunk length of the causal parallel form (64 measured fastest on CPU among 32-128).
        eps: denominator epsilon (SLAB: 1e-6).

    The DWC needs ``head_dim`` and is off when the kernel is built without it (the shell passes it).
    Its bias is dropped: a constant per-channel offset is absorbed by the output projection's bias,
    and without it a query with no visible key outputs exactly 0.

    Raises:
        ValueError: bad options, ``conv_2d`` without ``grid``, positions beyond ``max_seq_len``, the
            recurrent cache used bidirectionally, mismatched shapes or masks.
    """

    capabilities = Capabilities(packed=False, attn_bias=False, grid_2d=True, exact=False,
                                complexity="O(N*Dh^2)")

    def __init__(self, feature_map: str = "relu", conv_kernel: int = 5, conv_2d: bool = False,
                 key_pos: bool = True, chunk_size: int = 64, eps: float = 1e-6,
                 num_kv_heads: int | None = None, head_dim: int | None = None, max_seq_len: int | None = None):
        super().__init__()
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)}, got {feature_map!r}")
        if not isinstance(conv_kernel, int) or conv_kernel < 0 or (conv_kernel and conv_kernel % 2 == 0):
            raise ValueError(f"conv_kernel must be 0 (off) or an odd positive int, got {conv_kernel!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.feature_map, self.conv_2d, self.chunk_size, self.eps = feature_map, conv_2d, chunk_size, eps
        self.phi = FEATURE_MAPS[feature_map]
        self.conv_kernel = conv_kernel if head_dim is not None else 0
        self.dwc = None
        if self.conv_kernel:
            conv = nn.Conv2d if conv_2d else nn.Conv1d
            self.dwc = conv(head_dim, head_dim, conv_kernel, groups=head_dim, bias=False)
        self.key_pos = None
        if key_pos and None not in (num_kv_heads, head_dim, max_seq_len):
            self.key_pos = nn.Parameter(torch.zeros(num_kv_heads, max_seq_len, head_dim))

    # -- features -------------------------------------------------------------------------------
    def _features(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, offset: int):
        """fp32 ``phi(q)``, ``phi(k + P)`` and ``v`` with padded keys zeroed."""
        S = k.shape[2]
        kf = k.float()
        if self.key_pos is not None:
            if offset + S > self.key_pos.shape[1]:
                raise ValueError(
                    f"linear: key positions up to {offset + S} exceed max_seq_len={self.key_pos.shape[1]}; "
                    "truncate the input or build with a larger max_seq_len"
                )
            kf = kf + self.key_pos[:, offset:offset + S].float()  # (Hkv, S, Dh) broadcasts over B
        fresh = kf is not k and self.feature_map == "relu"  # our own buffer: ReLU in place, one 16 MB less
        fq, fk, vf = self.phi(q.float()), F.relu_(kf) if fresh else self.phi(kf), v.float()
        if ctx.key_padding_mask is not None:
            keep = ctx.key_padding_mask[:, None, :, None].float()  # (B, 1, S, 1)
            fk, vf = fk * keep, vf * keep
        return fq, fk, vf

    # -- the contract ---------------------------------------------------------------------------
    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        cache = ctx.cache if isinstance(ctx.cache, LinearAttentionCache) else None
        if cache is not None and not ctx.causal:
            raise ValueError("linear: the recurrent cache is for causal decoding; call with causal=True")
        with torch.autocast(q.device.type, enabled=False):  # fp32 sums, as in SLAB
            return self._attend(q, k, v, ctx, cache).to(q.dtype)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, cache) -> Tensor:
        B, H, T, D = q.shape
        Hkv, S = k.shape[1], k.shape[2]
        offset = cache.seen - S if cache is not None else 0  # absolute position of the first key
        fq, fk, vf = self._features(q, k, v, ctx, offset)
        fq = fq.view(B, Hkv, H // Hkv, T, D)  # (B, Hkv, G, T, Dh): head h uses kv head h // G
        if ctx.causal:
            if S > T:  # queries are the last T keys; the zero rows in front are dropped
                fq = F.pad(fq, (0, 0, S - T, 0))
            out, state = self._chunked(fq, fk, vf, cache.state if cache is not None else None)
            out = out[:, :, S - T:]
            if cache is not None:
                cache.state = state
        else:
            kv = torch.einsum("bhsd,bhse->bhde", fk, vf)  # (B, Hkv, Dh, Dh)
            num = torch.einsum("bhgtd,bhde->bhgte", fq, kv)
            den = torch.einsum("bhgtd,bhd->bhgt", fq, fk.sum(2))
            out = (num / (den[..., None] + self.eps)).reshape(B, H, T, D)
        if self.dwc is not None:
            conv = self._conv(vf, ctx, cache)[:, :, S - T:]  # (B, Hkv, T, Dh), a fresh tensor
            out = conv.add_(out) if H == Hkv else out + expand_kv_heads(conv, H)  # in place: one buffer less
        return out

    def _chunked(self, fq: Tensor, fk: Tensor, v: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """Causal linear attention by :class:`CausalLinearScan` (exact within a chunk, states between).

        fq ``(B, Hkv, G, S, Dh)``, fk/v ``(B, Hkv, S, Dh)``; ``state (B, Hkv, Dh, Dh + 1)`` holds
        ``[sum phi_k^T v | sum phi_k]`` of earlier keys. Returns the normalised output
        ``(B, Hkv * G, S, Dh)`` and the state after the last key (detached).
        """
        B, h, G, S, D = fq.shape
        C = min(self.chunk_size, S)
        n = -(-S // C)
        if n * C > S:  # zero features at the end: they add nothing to any sum
            pad = (0, 0, 0, n * C - S)
            fq, fk, v = F.pad(fq, pad), F.pad(fk, pad), F.pad(v, pad)
        q = fq.view(B, h, G, n, C, D).transpose(2, 3).reshape(B * h, n, G * C, D)  # rows (group, token)
        k, v = (t.reshape(B * h, n, C, D).contiguous() for t in (fk, v))  # (B*Hkv, n, C, Dh)
        out, final = CausalLinearScan.apply(q.contiguous(), k, v,
                                            None if state is None else state.reshape(B * h, D, D + 1), self.eps)
        out = out.view(B, h, n, G, C, D).transpose(2, 3).reshape(B, h * G, n * C, D)[:, :, :S]
        return out, final.view(B, h, D, D + 1)

    def _conv(self, v: Tensor, ctx: AttentionContext, cache: LinearAttentionCache | None) -> Tensor:
        """Depth-wise conv over values ``(B, Hkv, S, Dh)`` -> same shape (fp32).

        Both forms run as ``conv2d(groups=Dh)`` on a channels-last view of ``v`` (no layout copies):
        on CPU that measured ~4x (1-D) and ~18x (2-D) faster forward + backward than channels-first
        ``conv1d`` or a sum of shifted copies.
        """
        B, h, S, D = v.shape
        K = self.conv_kernel
        weight = self.dwc.weight.float()  # (Dh, 1, K) or (Dh, 1, K, K)
        if self.conv_2d:
            if ctx.grid is None or ctx.grid[0] * ctx.grid[1] != S or ctx.causal:
                raise ValueError(
                    f"linear: conv_2d needs a bidirectional call with grid=(rows, cols) covering the {S} tokens, "
                    f"got grid={ctx.grid}, causal={ctx.causal}; pass the grid or use conv_2d=False"
                )
            x = v.reshape(B * h, *ctx.grid, D).permute(0, 3, 1, 2)  # (B*h, Dh, rows, cols), channels-last
            y = F.conv2d(x, weight, padding=K // 2, groups=D)
            return y.permute(0, 2, 3, 1).reshape(B, h, S, D)
        pad = 0
        if ctx.causal:  # left context: the cached last K-1 values when decoding, else zeros
            tail = cache.tail if cache is not None else v.new_zeros(B, h, K - 1, D)
            x = torch.cat([tail, v], dim=2)  # (B, h, K-1+S, Dh)
            if cache is not None:
                cache.tail = x[:, :, x.shape[2] - (K - 1):].detach().clone()
        else:  # symmetric zero padding inside the conv (padding the causal case there and slicing the
            x, pad = v, K // 2  # output measured 5x slower backward: the sliced gradient changes layout)
        x = x.reshape(B * h, -1, 1, D).permute(0, 3, 1, 2)  # (B*h, Dh, L, 1), channels-last
        y = F.conv2d(x, weight[..., None], padding=(pad, 0), groups=D)  # (B*h, Dh, S, 1)
        return y.permute(0, 2, 3, 1).reshape(B, h, S, D)

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """The actual linear-attention map ``A (B, H, T, S)``.

        ``A_ij = phi_q_i . phi_k_j / (phi_q_i . sum_j' phi_k_j' + eps)`` (sums over visible keys).

        ``forward == A @ v + DWC(v)``: the depth-wise convolution term is a local filter of the values,
        not a query-key weighting, so it is not part of ``A``. Rows need not sum to 1 (they sum to
        slightly less because of ``eps``, and to 0 when ``phi_q . sum phi_k = 0``).

        Raises:
            ValueError: called with the recurrent cache (its keys are folded into the state).
        """
        if isinstance(ctx.cache, LinearAttentionCache):
            raise ValueError("linear: attention_weights needs every key; call it without the recurrent cache")
        with torch.autocast(q.device.type, enabled=False):
            fq, fk, _ = self._features(q, k, v, ctx, 0)
            a = torch.einsum("bhtd,bhsd->bhts", fq, expand_kv_heads(fk, q.shape[1]))  # (B, H, T, S)
        if ctx.causal:
            a = a.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), 0.0)
        return (a / (a.sum(-1, keepdim=True) + self.eps)).to(q.dtype)

    def new_cache(self, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int, device=None, dtype=None):
        """A constant-size :class:`LinearAttentionCache` (fp32 state whatever ``dtype``)."""
        return LinearAttentionCache(batch_size, num_kv_heads, head_dim, max_len, max(self.conv_kernel - 1, 0),
                                    device=device)

    def extra_repr(self) -> str:
        return (f"feature_map={self.feature_map!r}, conv_kernel={self.conv_kernel}, conv_2d={self.conv_2d}, "
                f"key_pos={self.key_pos is not None}, chunk_size={self.chunk_size}")
