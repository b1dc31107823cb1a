"""Beam search for encoder-decoders with the semantics of Hugging Face ``generate(num_beams=K)`` (Wu et al. 2016's
length normalisation, ``early_stopping=False``), so the same weights give the same tokens.

Per source, ``K`` running hypotheses and a pool of ``K`` finished ones. Each step ranks the ``2K`` best
continuations of all running beams by summed log-probability; a continuation that ends (``eos_id``, or the last
allowed step) joins the pool if it ranks among the first ``K``, scored ``sum log p / length ** length_penalty``
(``length`` counts the generated tokens, ``eos`` included), and the best ``K`` continuations that do not end keep
running. A source stops accepting finished hypotheses once its pool is full and its best running beam, normalised
by the current length, cannot beat the pool's worst. The answer is the pool's best.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models.seq2seq import reorder_cache

NEG = -1.0e9  # "impossible", as transformers uses (finite: sums stay ordered)


@torch.no_grad()
def beam_search(model: nn.Module, src: Tensor, mask: Tensor | None, bos_id: int, eos_id: int | None, steps: int,
                beams: int, length_penalty: float) -> Tensor:
    """``src (B, S)`` -> ``(B, L)`` best hypotheses, ``L <= steps``; after a hypothesis's ``eos_id``, ``eos_id``."""
    B, device = src.shape[0], src.device
    memory = model.encode(src, mask)  # (B, S, dim), once per source: beam k of source b is decoder row b*K + k
    cache = model.new_cache(B * beams, steps, device=device)  # the cross caches keep one row per source
    run_scores = torch.full((B, beams), NEG, device=device)
    run_scores[:, 0] = 0.0  # all beams start identical: keep one, or the top-k would pick K copies
    run_seqs = torch.empty(B, beams, 0, dtype=torch.long, device=device)
    pool = _Pool(B, beams, steps, device, eos_id)
    token = torch.full((B * beams, 1), bos_id, dtype=torch.long, device=device)
    spares: dict = {}  # reorder_cache's buffers, reused step to step
    for t in range(steps):
        logp = torch.log_softmax(model.decode(token, memory if t == 0 else None, mask, cache=cache)[:, -1].float(), -1)
        V = logp.shape[-1]
        total = (run_scores[..., None] + logp.view(B, beams, V)).view(B, beams * V)
        top, flat = total.topk(2 * beams, dim=-1)  # (B, 2K) best continuations of all beams
        parent, word = flat // V, flat % V
        cand = torch.cat([run_seqs.gather(1, parent[..., None].expand(-1, -1, t)), word[..., None]], dim=-1)
        ends = (word == eos_id) if eos_id is not None else torch.zeros_like(word, dtype=torch.bool)
        ends = ends | (t + 1 == steps)
        keep = (top + ends.float() * NEG).topk(beams, dim=-1).indices  # the best K that go on
        pool.add(cand, top / (t + 1) ** length_penalty, ends, beams)
        run_scores, run_seqs = top.gather(1, keep) + 0.0, cand.gather(1, keep[..., None].expand(-1, -1, t + 1))
        rows = (parent.gather(1, keep) + torch.arange(B, device=device)[:, None] * beams).view(-1)
        reorder_cache(cache, rows, spares)
        token = run_seqs[..., -1].reshape(-1, 1)
        pool.check_improvable(run_scores[:, 0] / max(t + 1, 1) ** length_penalty)
        if not bool(pool.open.any()):
            break
    return pool.best()


class _Pool:
    """The ``K`` best finished hypotheses per source (scores, padded sequences, lengths) and whether each source can
    still improve its pool."""

    def __init__(self, B: int, K: int, steps: int, device, eos_id: int | None):
        self.scores = torch.full((B, K), NEG, device=device)
        self.seqs = torch.full((B, K, steps), eos_id if eos_id is not None else 0, dtype=torch.long, device=device)
        self.lengths = torch.zeros(B, K, dtype=torch.long, device=device)
        self.full = torch.zeros(B, K, dtype=torch.bool, device=device)  # slot holds a finished hypothesis
        self.open = torch.ones(B, dtype=torch.bool, device=device)

    def add(self, cand: Tensor, normed: Tensor, ends: Tensor, K: int) -> None:
        """Merge the candidates ``cand (B, 2K, n)`` that end and rank among the first ``K`` into the pool."""
        B, _, n = cand.shape
        first_k = torch.arange(cand.shape[1], device=cand.device)[None, :] < K
        take = ends & first_k & self.open[:, None]
        scores = torch.cat([self.scores, torch.where(take, normed, torch.full_like(normed, NEG))], dim=1)
        padded = torch.cat([cand, self.seqs.new_full((B, cand.shape[1], self.seqs.shape[2] - n), self.seqs[0, 0, 0])], -1)
        seqs = torch.cat([self.seqs, padded], dim=1)
        lengths = torch.cat([self.lengths, torch.full_like(take, n, dtype=torch.long)], dim=1)
        full = torch.cat([self.full, take], dim=1)
        idx = scores.topk(K, dim=-1).indices
        self.scores, self.full, self.lengths = scores.gather(1, idx), full.gather(1, idx), lengths.gather(1, idx)
        self.seqs = seqs.gather(1, idx[..., None].expand(-1, -1, seqs.shape[2]))

    def check_improvable(self, best_running: Tensor) -> None:
        """Close the sources whose pool is full and whose best running beam cannot beat the pool's worst."""
        worst = torch.where(self.full, self.scores, torch.full_like(self.scores, NEG)).min(dim=1).values
        worst = torch.where(self.full.all(dim=1), worst, torch.full_like(worst, NEG))
        self.open &= best_running > worst

    def best(self) -> Tensor:
        """``(B, L)``: each source's best finished hypothesis, ``L`` the longest returned."""
        top = self.scores.argmax(dim=1)
        rows = torch.arange(top.shape[0], device=top.device)
        length = int(self.lengths[rows, top].max())
        return self.seqs[rows, top, :length]
