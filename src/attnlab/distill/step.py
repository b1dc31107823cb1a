"""One distillation step: the teacher once (no gradients), the student, the weighted losses.

The teacher is held outside the student's module tree, so the optimizer, checkpoints and gradients see only the
student. Under bf16 training the step runs inside the trainer's autocast, and so does the teacher; every loss is
computed in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .capture import Captured, capture, require_softmax_map
from .losses import (attention_transfer_loss, common_divisors, embedding_mse, relation_loss, value_relation_loss)

RELATIONS = {"qq": (0, 0), "kk": (1, 1), "vv": (2, 2), "qk": (0, 1)}


class DistillStep:
    """``step(student, batch) -> (loss, metrics)`` for the trainer; ``batch`` holds ``ids, mask (B, T)``.

    Args:
        teacher: the frozen teacher encoder.
        losses: loss name -> weight (``attention``, ``value_relation``, ``qq``, ``kk``, ``vv``, ``qk``,
            ``embedding_mse``).
        relation_heads: ``A_r`` of the relation losses (``None``: the teacher's head count).
        teacher_layer: the teacher layer distilled, counted from 1 (``None``: the last); the student's is its last.

    Raises:
        ValueError: at construction, a loss the pair cannot give — v1 with unequal head counts or a student kernel
            without attention distributions, relation heads dividing neither width, embedding MSE across widths.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, losses: dict[str, float],
                 relation_heads: int | None = None, teacher_layer: int | None = None):
        self.losses = dict(losses)
        self.teacher = teacher  # a plain attribute: never a submodule of anything the optimizer sees
        L = teacher.cfg.num_layers
        if teacher_layer is not None and not 1 <= teacher_layer <= L:
            raise ValueError(f"teacher.layer={teacher_layer} is outside the teacher's layers 1..{L}")
        self.teacher_layer = (teacher_layer or L) - 1
        self.relation_heads = relation_heads or teacher.cfg.num_heads
        self.check(student)

    def check(self, student: nn.Module) -> None:
        t, s = self.teacher.blocks[self.teacher_layer].attn, student.blocks[-1].attn
        if {"attention", "value_relation"} & set(self.losses):
            if (t.num_heads, t.num_kv_heads) != (s.num_heads, s.num_kv_heads):
                raise ValueError(f"the MiniLM v1 losses need equal head counts, but the teacher has {t.num_heads} "
                                 f"heads ({t.num_kv_heads} key/value) and the student {s.num_heads} "
                                 f"({s.num_kv_heads}); give the student model.num_heads={t.num_heads}, or use the v2 "
                                 "relations (objective.losses={v2: 1}), which allow any head count")
        if "attention" in self.losses:
            require_softmax_map(s.kernel)
        if set(RELATIONS) & set(self.losses):
            widths = {"teacher q": t.num_heads * t.head_dim, "teacher k/v": t.num_kv_heads * t.head_dim,
                      "student q": s.num_heads * s.head_dim, "student k/v": s.num_kv_heads * s.head_dim}
            bad = [k for k, w in widths.items() if w % self.relation_heads]
            if bad:
                raise ValueError(f"objective.relation_heads={self.relation_heads} does not divide the widths of "
                                 f"{', '.join(bad)} ({widths}); choose one of {common_divisors(*widths.values())}")
        if "embedding_mse" in self.losses and self.teacher.cfg.dim != student.cfg.dim:
            raise ValueError(f"embedding_mse compares embeddings of one width, but the teacher's dim is "
                             f"{self.teacher.cfg.dim} and the student's {student.cfg.dim}; use the relation losses")

    def __call__(self, student: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        ids, mask = batch["ids"], batch["mask"]
        full = "embedding_mse" in self.losses
        with torch.no_grad():
            t = capture(self.teacher, ids, mask, self.teacher_layer, embedding=full)
        s = capture(student, ids, mask, -1, embedding=full)
        terms = self.terms(t, s)
        loss = sum(self.losses[k] * v for k, v in terms.items())
        return loss, {**{k: v.detach() for k, v in terms.items()}, "loss": loss.detach()}

    def terms(self, t: Captured, s: Captured) -> dict[str, Tensor]:
        """Each loss of ``self.losses`` (unweighted) from the two captures."""
        out: dict[str, Tensor] = {}
        mask = s.mask
        if "attention" in self.losses:
            with torch.no_grad():
                t_scores, t_keep = t.attention_scores()
            s_scores, s_keep = s.attention_scores()
            keep = _both(t_keep, s_keep)  # [choice] the teacher renormalised over the keys the student may see
            out["attention"] = attention_transfer_loss(t_scores, s_scores, keep, mask)
        if "value_relation" in self.losses:
            out["value_relation"] = value_relation_loss(t.heads()[2].detach(), s.heads()[2], mask)
        wanted = [r for r in RELATIONS if r in self.losses]
        if wanted:
            with torch.no_grad():
                tp = t.projections()
            sp = s.projections()
            for r in wanted:
                a, b = RELATIONS[r]
                out[r] = relation_loss(tp[a], sp[a], self.relation_heads, mask,
                                       None if a == b else tp[b], None if a == b else sp[b])
        if "embedding_mse" in self.losses:
            out["embedding_mse"] = embedding_mse(t.embedding, s.embedding)
        return out


def _both(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None or b is None:
        return a if b is None else b
    return a & b
