"""Selective Self-Attention (SSA): query and value inverse temperatures.

Zhang et al., "Selective Attention: Enhancing Transformer through Principled Context Control"
(NeurIPS 2024; official code ``umich-sota/selective_attention``, which releases only the positional
temperature: ``lit_gpt/model_finetune_att.py``, ``..._no_func.py``, ``gpt_2_PTS.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import AttentionKernel, fully_masked_rows, zero_if_empty
from ..capabilities import Capabilities
from ..context import AttentionContext
from ..masks import context_mask
from ..reference import expand_kv_heads, masked_softmax
from ..registry import register_attention

POSITION_FORMS = ("func", "no_func")


def visible_keys(keep: Tensor | None, T: int, S: int, device) -> Tensor:
    """``n_i``: number of keys each query may see, ``(B|1, 1, T, 1)`` float (>= 1 to keep ``log`` finite)."""
    if keep is None:
        return torch.full((1, 1, T, 1), float(S), device=device)
    return keep.sum(-1, keepdim=True).float().clamp_min(1.0)


def selective_attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, scale: float,
                        tau_q: Tensor | None = None, tau_v: Tensor | None = None, bias: Tensor | None = None,
                        dropout_p: float = 0.0) -> Tensor:
    """``o_i = sum_j softmax_j(tau_q[i] * q_i.k_j * scale + bias) * tau_v[j] * v_j`` (fully masked rows -> 0).

    Args:
        q: ``(B, H, T, Dh)``; k, v: ``(B, Hkv, S, Dh)``.
        tau_q: ``(B|1, H|1, T, 1)`` query inverse temperatures (``None`` = 1).
        tau_v: ``(B|1, H|1, S, 1)`` per-key value scales (``None`` = 1); 0 removes a key's value exactly.
    """
    H = q.shape[1]
    k, v = expand_kv_heads(k, H), expand_kv_heads(v, H)  # (B, H, S, Dh)
    if tau_q is not None:
        q = q * tau_q.to(q.dtype)  # scaling q scales the whole logit row
    if tau_v is not None:
        v = v * tau_v.to(v.dtype)
    empty = fully_masked_rows(keep)
    if empty is not None:
        keep = keep | empty
    mask = keep
    if bias is not None:
        b = bias.to(q.dtype)
        mask = b if keep is None else b.masked_fill(~keep, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return zero_if_empty(out, empty)


@register_attention("selective")
class SelectiveAttention(AttentionKernel):
    """Selective Self-Attention (Zhang et al. 2024): learned query and value inverse temperatures.

    ``s_ij = tau_q(x_i, i) * q_i.k_j / sqrt(Dh)``, ``o_i = sum_j softmax_j(s_ij) tau_v(x_j) v_j``.

    * Position term (pinned, official code): ``tau_pos(i) = 1 + sigma_pos * log(n_i)``, ``n_i`` = keys
      visible to query ``i`` (causal: ``i + 1``, so row 0 is unscaled; padding/packing: the row's keep
      count; decoding: absolute position + 1). ``"func"``: ``sigma_pos = exp(-exp(beta))``, one ``beta``
      per layer shared by heads; ``"no_func"`` ablation: ``sigma_pos = beta``, ``beta`` init 1e-5.
    * Token term [choice; not in the official release]: ``tau_tok = tanh(w_h . q_i + b_h)`` per head,
      derived from the existing query projection (``H*(Dh+1)`` extra parameters), combined
      additively ``tau_q = tau_pos + tau_tok`` (the unofficial re-implementation's rule). Zero-initialised,
      so at init ``tau_q = tau_pos``. Not clamped: a negative ``tau_q`` inverts the row, as in the source.
    * Value term [choice]: ``tau_v = 1 + tanh(u_h . v_j + c_h)`` per query head (same functional form,
      plus the constant 1 that ``tau_pos`` contributes at ``n = 1``), zero-initialised to 1.

    Shapes: q ``(B, H, T, Dh)``, k/v ``(B, Hkv, S, Dh)`` -> ``(B, H, T, Dh)``. An additive
    ``attn_bias`` is added after the temperature (it scales content logits only).

    Args:
        position_temperature, token_temperature, value_temperature: switch each term on/off.
        beta_init: init of ``beta`` for ``"func"`` (1.5 as GPT-2 PTS, ``sigma_pos ~ 0.011``; the
            fine-tuning scripts use 2.0, ``~6e-4``).
        position_form: ``"func"`` (default, official) or ``"no_func"``.
        dropout: attention dropout (training only). scale: default ``1/sqrt(Dh)``.
        num_heads, head_dim: structural, filled in by the shell (needed by the token/value terms).

    Raises:
        ValueError: bad option values, or head counts differing from the construction.
    """

    capabilities = Capabilities(exact=False, complexity="O(N^2)")

    def __init__(self, position_temperature: bool = True, token_temperature: bool = True,
                 value_temperature: bool = True, beta_init: float = 1.5, position_form: str = "func",
                 dropout: float = 0.0, scale: float | None = None, num_heads: int = 4, head_dim: int = 16):
        super().__init__(scale=scale)
        if position_form not in POSITION_FORMS:
            raise ValueError(f"selective: position_form={position_form!r} is not one of {POSITION_FORMS}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"selective: dropout must be in [0, 1), got {dropout}")
        self.position_temperature, self.token_temperature = position_temperature, token_temperature
        self.value_temperature, self.position_form, self.dropout = value_temperature, position_form, dropout
        self.num_heads, self.head_dim = num_heads, head_dim
        init = beta_init if position_form == "func" else 1e-5
        self.beta = nn.Parameter(torch.tensor(float(init))) if position_temperature else None
        if token_temperature:
            self.tok_weight = nn.Parameter(torch.zeros(num_heads, head_dim))
            self.tok_bias = nn.Parameter(torch.zeros(num_heads))
        if value_temperature:
            self.val_weight = nn.Parameter(torch.zeros(num_heads, head_dim))
            self.val_bias = nn.Parameter(torch.zeros(num_heads))

    def sigma_pos(self) -> Tensor:
        return torch.exp(-torch.exp(self.beta)) if self.position_form == "func" else self.beta

    def temperatures(self, q: Tensor, v: Tensor, keep: Tensor | None, S: int) -> tuple[Tensor | None, Tensor | None]:
        """``tau_q (B|1, H|1, T, 1)`` and ``tau_v (B, H, S, 1)`` (``None`` when the term is off)."""
        T = q.shape[2]
        tau_q = None
        if self.position_temperature:
            n = visible_keys(keep, T, S, q.device)  # (B|1, 1, T, 1)
            tau_q = 1.0 + self.sigma_pos() * torch.log(n)
        if self.token_temperature:
            tok = torch.tanh(torch.einsum("bhtd,hd->bht", q, self.tok_weight) + self.tok_bias[:, None])[..., None]
            tau_q = tok + (1.0 if tau_q is None else tau_q)  # (B, H, T, 1)
        tau_v = None
        if self.value_temperature:
            ve = expand_kv_heads(v, q.shape[1])  # (B, H, S, Dh)
            tau_v = 1.0 + torch.tanh(torch.einsum("bhsd,hd->bhs", ve, self.val_weight) + self.val_bias[:, None])[..., None]
        return tau_q, tau_v

    def _check_heads(self, q: Tensor) -> None:
        if (self.token_temperature or self.value_temperature) and (q.shape[1], q.shape[3]) != (self.num_heads, self.head_dim):
            raise ValueError(
                f"selective was built for num_heads={self.num_heads}, head_dim={self.head_dim} but q has "
                f"{q.shape[1]} heads of width {q.shape[3]}; build it with matching structural args"
            )

    def attend(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        self._check_heads(q)
        T, S = q.shape[2], k.shape[2]
        keep = context_mask(ctx, T, S, q.device)
        tau_q, tau_v = self.temperatures(q, v, keep, S)
        p = self.dropout if self.training else 0.0
        return selective_attention(q, k, v, keep, self.softmax_scale(q.shape[-1]), tau_q, tau_v, ctx.attn_bias, p)

    def attention_map(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """``softmax(tau_q * scores)`` ``(B, H, T, S)`` (the value temperature scales values, not weights)."""
        T, S = q.shape[2], k.shape[2]
        keep = context_mask(ctx, T, S, q.device)
        tau_q, _ = self.temperatures(q, v, keep, S)
        scores = torch.einsum("bhtd,bhsd->bhts", q, expand_kv_heads(k, q.shape[1])).float()
        scores = scores * self.softmax_scale(q.shape[-1]) * (1.0 if tau_q is None else tau_q)
        if ctx.attn_bias is not None:
            scores = scores + ctx.attn_bias
        return masked_softmax(scores, keep).to(q.dtype)

