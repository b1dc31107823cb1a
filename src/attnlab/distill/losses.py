"""The distillation losses, each a plain function of tensors.

MiniLM v1 (Wang, Wei, Dong, Bao, Yang, Zhou 2020, "MiniLM: Deep Self-Attention Distillation for Task-Agnostic
Compression of Pre-Trained Transformers", arXiv 2002.10957): the student's last-layer attention distributions and
value relations mimic the teacher's last layer. MiniLM v2 (Wang, Bao, Huang, Dong, Wei 2021, "MiniLMv2: Multi-Head
Self-Attention Relation Distillation", arXiv 2012.15828): Q-Q, K-K and V-V relations over ``A_r`` relation heads, so
head counts and widths may differ. Plus the embedding MSE of sentence-transformers' distillation examples (Reimers &
Gurevych 2020, "Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation").

Every KL is row-wise over keys, computed in float32 from ``log_softmax`` of both sides (never the log of a
probability), with padded keys masked and the mean taken over real query rows only, then heads, then sequences.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def row_kl(teacher_scores: Tensor, student_scores: Tensor, keep: Tensor | None = None,
           query_mask: Tensor | None = None) -> Tensor:
    """``mean KL(softmax(teacher_scores) || softmax(student_scores))`` over rows: a 0-dim float32 tensor.

    ``KL(p || q) = sum_j p_j (log p_j - log q_j)`` over the last (key) axis, from log-softmaxes. The mean is
    ``(1 / B) sum_b (1 / A) sum_a sum_t keep_bt KL_bat / sum_t keep_bt``: over the real query rows of each sequence,
    the heads, then the sequences (MiniLM's ``1 / (A_h |x|)`` per sequence).

    Args:
        teacher_scores, student_scores: ``(B, A, T, S)`` pre-softmax scores (any float dtype).
        keep: bool, broadcastable to ``(B, A, T, S)``: True where a key is visible (padding and pattern masks).
            Both sides are masked by it; a row with no visible key counts as no row.
        query_mask: ``(B, T)`` bool, True at real query positions (``None``: every row).

    Raises:
        ValueError: the two score tensors differ in shape.
    """
    if teacher_scores.shape != student_scores.shape:
        raise ValueError(f"teacher and student maps differ in shape: {tuple(teacher_scores.shape)} vs "
                         f"{tuple(student_scores.shape)}; both must be (batch, heads, queries, keys)")
    t, s = teacher_scores.float(), student_scores.float()
    B, A, T, _ = t.shape
    if keep is not None:
        keep = keep.expand_as(t)
        t, s = t.masked_fill(~keep, float("-inf")), s.masked_fill(~keep, float("-inf"))
        live = keep.any(-1)  # (B, A, T): rows with a visible key
        t, s = t.masked_fill(~live[..., None], 0.0), s.masked_fill(~live[..., None], 0.0)
    else:
        live = torch.ones(B, A, T, dtype=torch.bool, device=t.device)
    log_p, log_q = F.log_softmax(t, -1), F.log_softmax(s, -1)
    diff = log_p - log_q
    if keep is not None:  # masked keys: p = 0 and both logs -inf; their term is 0 (not nan), and so is its gradient
        diff = diff.masked_fill(~keep, 0.0)
    terms = log_p.exp() * diff
    rows = live if query_mask is None else live & query_mask[:, None, :].to(torch.bool)
    kl = terms.sum(-1) * rows  # (B, A, T)
    per_seq = kl.sum(-1) / rows.sum(-1).clamp(min=1)  # (B, A)
    return per_seq.mean()


def attention_transfer_loss(teacher_scores: Tensor, student_scores: Tensor, keep: Tensor | None = None,
                            query_mask: Tensor | None = None) -> Tensor:
    """MiniLM v1's ``L_AT = (1 / (A_h |x|)) sum_a sum_t KL(AT^T_{a,t} || AT^S_{a,t})`` with
    ``AT_a = softmax(Q_a K_a^T / sqrt(d_k))``: :func:`row_kl` of the two models' ``(B, A_h, T, T)`` attention scores.

    Raises:
        ValueError: different head counts (v1 needs equal counts; the v2 relations do not).
    """
    _same_heads(teacher_scores, student_scores, "attention")
    return row_kl(teacher_scores, student_scores, keep, query_mask)


def value_relation_loss(teacher_v: Tensor, student_v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """MiniLM v1's ``L_VR = (1 / (A_h |x|)) sum_a sum_t KL(VR^T_{a,t} || VR^S_{a,t})`` with
    ``VR_a = softmax(V_a V_a^T / sqrt(d_k))``, each model with its own ``d_k``.

    Args:
        teacher_v, student_v: ``(B, A_h, T, d_k)`` per-head values (``d_k`` may differ between the two).
        key_mask: ``(B, T)`` bool, True at real tokens (masks padded keys and query rows).

    Raises:
        ValueError: different head counts or sequence shapes.
    """
    _same_heads(teacher_v, student_v, "value_relation")
    keep = None if key_mask is None else key_mask[:, None, None, :].to(torch.bool)
    return row_kl(_self_scores(teacher_v), _self_scores(student_v), keep, key_mask)


def relation_loss(teacher_x: Tensor, student_x: Tensor, relation_heads: int, key_mask: Tensor | None = None,
                  teacher_y: Tensor | None = None, student_y: Tensor | None = None) -> Tensor:
    """MiniLM v2's relation term for one relation (Q-Q, K-K or V-V):
    ``(1 / (A_r |x|)) sum_a sum_t KL(R^T_{a,t} || R^S_{a,t})``, ``R_a = softmax(X_a Y_a^T / sqrt(d_r))``.

    ``X`` (and ``Y``, default ``X``) is a projection concatenated over heads, ``(B, T, d_h)``, re-split into
    ``relation_heads`` heads of ``d_r = d_h / A_r`` features, each model with its own ``d_r``. With ``Y`` given this is
    a cross relation (Q-K: v1's attention transfer when ``A_r`` is the attention head count).

    Raises:
        ValueError: ``relation_heads`` does not divide a width (names the common divisors that would), or the
            sequence shapes differ.
    """
    t = split_relation_heads(teacher_x, relation_heads, "teacher")
    s = split_relation_heads(student_x, relation_heads, "student")
    ty = t if teacher_y is None else split_relation_heads(teacher_y, relation_heads, "teacher")
    sy = s if student_y is None else split_relation_heads(student_y, relation_heads, "student")
    keep = None if key_mask is None else key_mask[:, None, None, :].to(torch.bool)
    return row_kl(_cross_scores(t, ty), _cross_scores(s, sy), keep, key_mask)


def embedding_mse(teacher_emb: Tensor, student_emb: Tensor) -> Tensor:
    """``mean((e_T - e_S)^2)`` over sentences and features: the MSE of ``(B, D)`` sentence embeddings (the loss of
    sentence-transformers' model distillation examples).

    Raises:
        ValueError: the embeddings differ in shape (a student of another width needs a projection; use the relation
            losses instead).
    """
    if teacher_emb.shape != student_emb.shape:
        raise ValueError(f"embedding_mse compares embeddings of one shape, got teacher {tuple(teacher_emb.shape)} and "
                         f"student {tuple(student_emb.shape)}; give the student the teacher's dim, or use the "
                         "relation losses (qq, kk, vv), which allow any width")
    return F.mse_loss(student_emb.float(), teacher_emb.float())


def split_relation_heads(x: Tensor, heads: int, who: str = "model") -> Tensor:
    """``(B, T, d_h)`` -> ``(B, A_r, T, d_h / A_r)``.

    Raises:
        ValueError: ``heads`` does not divide ``d_h``.
    """
    width = x.shape[-1]
    if heads < 1 or width % heads:
        ok = [a for a in range(1, width + 1) if width % a == 0]
        raise ValueError(f"{heads} relation heads do not divide the {who}'s width {width}; choose "
                         f"objective.relation_heads among the divisors of every width, e.g. {ok[-6:]}")
    B, T, _ = x.shape
    return x.view(B, T, heads, width // heads).transpose(1, 2)


def common_divisors(*widths: int) -> list[int]:
    """The relation head counts that divide every width."""
    return [a for a in range(1, min(widths) + 1) if all(w % a == 0 for w in widths)]


def _self_scores(x: Tensor) -> Tensor:
    return _cross_scores(x, x)


def _cross_scores(x: Tensor, y: Tensor) -> Tensor:
    """``x y^T / sqrt(d)`` in float32: ``(B, A, T, d), (B, A, S, d)`` -> ``(B, A, T, S)``."""
    return torch.matmul(x.float(), y.float().transpose(-1, -2)) / math.sqrt(x.shape[-1])


def _same_heads(t: Tensor, s: Tensor, what: str) -> None:
    if t.shape[1] != s.shape[1]:
        raise ValueError(f"the {what} loss (MiniLM v1) needs equal head counts, but the teacher has {t.shape[1]} and "
                         f"the student {s.shape[1]}; give the student the teacher's head count, or use the v2 relations "
                         "(objective.losses={qq: 1, kk: 1, vv: 1}), which allow any head count")
    if t.shape[0] != s.shape[0] or t.shape[2] != s.shape[2]:
        raise ValueError(f"teacher and student {what} inputs cover different tokens: {tuple(t.shape)} vs "
                         f"{tuple(s.shape)}")
