"""Deconstructing Attention: controlled variants relaxing token mixing and the mathematical form.

Xue, Moosavi, Aletras 2025, "Deconstructing Attention: Investigating Design Principles for Effective
Language Modeling" (arXiv 2510.11602; code ``HUIYINXUE/DeconAttn``, not available to us). Every variant
reuses the shell's ``q_proj, k_proj, v_proj, out_proj`` and owns no parameters, so parameter counts
equal standard attention's exactly. Mix them per layer with a schedule, e.g.
``create_model("gpt-tiny", num_layers=4, attention=["non_approximate", "softmax"] * 2)`` (the paper's
hybrid: variant in odd layers, 1-indexed). The sequence-dependency and current-QK variants live in
:mod:`attnlab.attention.deconstructing_qk`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import AttentionKernel, MixingMapKernel
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..masks import context_mask
from ..reference import expand_kv_heads, masked_softmax
from ..registry import register_attention


@register_attention("mlp_mixing")
class MLPMixing(AttentionKernel):
    """"MLP" variant (relaxes token mixing): a gated MLP per token, no cross-token interaction.

    Paper: ``O = FC_dn(SiLU(FC_gate(H)) * FC_up(H))``, parameter-matched to attention. [choice] Built
    from the shell's projections: ``FC_gate = W_Q``, ``FC_up = W_K + W_V`` (so every projection trains
    and the stored parameter count equals standard attention's exactly), ``FC_dn = W_O``:
    ``o_t = SiLU(q_t) * (k_t + v_t)`` per head. The output at position ``t`` depends only on ``x_t``.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` (the last ``T`` keys are the queries' own
    tokens) -> ``(B, H, T, Dh)``. Masks are irrelevant (a token only "sees" itself).

    Raises: ValueError on mismatched shapes (from ``check_call``).
    """

    capabilities = Capabilities(attn_bias=False, exact=False, complexity="O(N)")

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        H, T = q.shape[1], q.shape[2]
        own_k = expand_kv_heads(k[:, :, -T:], H)  # (B, H, T, Dh): each query's own token
        own_v = expand_kv_heads(v[:, :, -T:], H)
        return F.silu(q) * (own_k + own_v)

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """The identity map (each token mixes only itself), bottom-right aligned: ``(B, H, T, S)``."""
        B, H, T, S = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        eye = torch.zeros(T, S, dtype=q.dtype, device=q.device)
        eye[torch.arange(T), torch.arange(S - T, S)] = 1.0
        return eye.expand(B, H, T, S)


def _signed_clamp(den: Tensor, eps: float) -> Tensor:
    """Keep a denominator's sign but its magnitude >= eps (0 counts as positive)."""
    return torch.where(den >= 0, den.clamp_min(eps), den.clamp_max(-eps))


@register_attention("approximate")
class TaylorApproximateAttention(MixingMapKernel):
    """"Approximate" variant (math form kept in spirit): 2nd-order Taylor expansion of ``exp`` (Based).

    With ``s_ij = q_i.k_j / sqrt(Dh)`` over the keys ``j`` query ``i`` may see:

    * paper form (default; Appendix I, Eqs. 14-17): three separately normalised terms
      ``o_i = mean_j v_j + sum_j s_ij v_j / sum_j s_ij + sum_j s_ij^2 v_j / sum_j s_ij^2``
      (the 1/2 of ``s^2/2`` cancels). The first-order denominator can have either sign: it is clamped
      away from 0 by ``eps`` keeping its sign [choice].
    * ``joint_norm=True``: Based's single denominator ``sum_j (1 + s + s^2/2)`` (always > 0).

    No feature-dimension reduction: the full ``Dh`` is used [choice]. The forward uses the exact
    parallel (quadratic) form; :func:`taylor_recurrent` is the equal linear-time recurrent form.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)``; fully masked rows -> 0.
    Raises: ValueError on bad shapes or ``eps <= 0``.
    """

    capabilities = Capabilities(attn_bias=False, exact=False, complexity="O(N*Dh^3) recurrent; O(N^2) here")

    def __init__(self, joint_norm: bool = False, eps: float = 1e-6, scale: float | None = None):
        super().__init__(scale=scale)
        if eps <= 0:
            raise ValueError(f"approximate: eps must be > 0, got {eps}")
        self.joint_norm, self.eps = joint_norm, eps

    def mixing_weights(self, q: Tensor, k: Tensor, ctx: AttentionContext) -> Tensor:
        """The implied ``(B, H, T, S)`` mixing matrix (rows sum to 3, or 1 with ``joint_norm``)."""
        T, S = q.shape[2], k.shape[2]
        keep = context_mask(ctx, T, S, q.device)
        s = torch.einsum("bhtd,bhsd->bhts", q, expand_kv_heads(k, q.shape[1])).float() * self.softmax_scale(q.shape[-1])
        w = torch.ones_like(s) if keep is None else keep.to(s.dtype).expand_as(s)  # (B, H, T, S)
        if self.joint_norm:
            terms = [w * (1.0 + s + 0.5 * s * s)]
        else:
            terms = [w, w * s, w * 0.5 * s * s]
        out = torch.zeros_like(s)
        any_key = w.sum(-1, keepdim=True) > 0  # rows with no visible key stay 0
        for t in terms:
            den = _signed_clamp(t.sum(-1, keepdim=True), self.eps)
            out = out + torch.where(any_key, t / den, torch.zeros_like(t))
        return out



def taylor_recurrent(q: Tensor, k: Tensor, v: Tensor, scale: float, joint_norm: bool = False,
                     eps: float = 1e-6) -> Tensor:
    """Causal recurrent form of :class:`TaylorApproximateAttention` (equal heads, no other masks).

    State after token ``j``: ``z0 = j+1``, ``S0 = sum v``; ``z1 = sum k``, ``S1 = sum k (x) v``;
    ``z2 = sum phi(k)``, ``S2 = sum phi(k) (x) v`` with ``phi(x) = x (x) x / sqrt(2)`` on
    ``x = k * scale^(1/2)`` (so ``phi(q).phi(k) = s^2 / 2``). Memory ``O(T * Dh^3)``: for tests.
    """
    B, H, T, D = q.shape
    r = scale ** 0.5
    qs, ks = q.float() * r, k.float() * r  # s = qs . ks
    vf = v.float()
    cnt = torch.arange(1, T + 1, device=q.device, dtype=torch.float32)[:, None]  # (T, 1)
    s0 = vf.cumsum(2)  # (B, H, T, D)
    s1 = torch.einsum("bhtd,bhte->bhtde", ks, vf).cumsum(2)  # (B, H, T, D, D)
    z1 = ks.cumsum(2)
    pk = torch.einsum("bhtd,bhte->bhtde", ks, ks).reshape(B, H, T, D * D) / 2 ** 0.5
    pq = torch.einsum("bhtd,bhte->bhtde", qs, qs).reshape(B, H, T, D * D) / 2 ** 0.5
    s2 = torch.einsum("bhtf,bhte->bhtfe", pk, vf).cumsum(2)  # (B, H, T, D*D, D)
    z2 = pk.cumsum(2)
    num1, den1 = torch.einsum("bhtd,bhtde->bhte", qs, s1), (qs * z1).sum(-1, keepdim=True)
    num2, den2 = torch.einsum("bhtf,bhtfe->bhte", pq, s2), (pq * z2).sum(-1, keepdim=True)
    if joint_norm:
        return ((s0 + num1 + num2) / _signed_clamp(cnt + den1 + den2, eps)).to(q.dtype)
    out = s0 / cnt + num1 / _signed_clamp(den1, eps) + num2 / _signed_clamp(den2, eps)
    return out.to(q.dtype)


@register_attention("non_approximate")
class NonApproximateAttention(MixingMapKernel):
    """"Non-approximate" variant (math form broken): query-independent softmax-weighted running mean.

    ``q = SiLU(q)``; one score per **key position** ``e_j = q_j . k_j / sqrt(Dh)`` (the query and key of
    the same token); ``o_i = sum_{j visible} exp(e_j) v_j / sum_{j visible} exp(e_j)``. Causal, it is a
    running mean with a constant-size recurrent state (:func:`non_approximate_recurrent`). The
    denominator grows monotonically; the paper reports instability when used in every layer at 500M.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, T, Dh)`` (keys must be the queries' own tokens, so no
    KV-cache decoding) -> ``(B, H, T, Dh)``.

    Raises: ValueError when keys and queries differ in length.
    """

    capabilities = Capabilities(kv_cache=False, attn_bias=False, exact=False, complexity="O(N) recurrent; O(N^2) here")

    def mixing_weights(self, q: Tensor, k: Tensor, ctx: AttentionContext) -> Tensor:
        T, S = q.shape[2], k.shape[2]
        if S != T:
            raise ValueError(f"non_approximate needs one query per key (got {T} queries, {S} keys); no KV cache")
        e = (F.silu(q) * expand_kv_heads(k, q.shape[1])).float().sum(-1) * self.softmax_scale(q.shape[-1])  # (B, H, S)
        keep = context_mask(ctx, T, S, q.device)
        return masked_softmax(e[:, :, None, :].expand(-1, -1, T, -1), keep)  # (B, H, T, S)



def non_approximate_recurrent(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal recurrent form: a running (max, numerator, denominator) state per head, one step per token."""
    B, H, T, D = q.shape
    e = (F.silu(q.float()) * k.float()).sum(-1) * scale  # (B, H, T)
    m = torch.full((B, H), float("-inf"), device=q.device)
    num = torch.zeros(B, H, D, device=q.device)
    den = torch.zeros(B, H, device=q.device)
    outs = []
    for t in range(T):
        m_new = torch.maximum(m, e[:, :, t])
        decay = torch.exp(m - m_new)  # rescale the old state to the new running max
        w = torch.exp(e[:, :, t] - m_new)
        num = num * decay[..., None] + w[..., None] * v[:, :, t].float()
        den = den * decay + w
        m = m_new
        outs.append(num / den[..., None])
    return torch.stack(outs, dim=2).to(q.dtype)  # (B, H, T, Dh)
