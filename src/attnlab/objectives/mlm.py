"""Masked language modelling (BERT, Devlin et al. 2019): corrupt a share of the tokens, predict the originals.

:func:`mask_tokens` picks ``prob`` (15%) of the real, non-special tokens — or of the words, with
``word_ids`` (whole-word masking: every piece of a chosen word is masked together) — and replaces 80% of
the picked tokens by ``mask_id``, 10% by a random token and leaves 10% unchanged; labels hold the
original ids at picked positions and ``IGNORE_INDEX`` (-100) elsewhere. :func:`mlm_step` is the objective:
cross-entropy at the picked positions, with masked-token accuracy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .seq2seq import smoothed_cross_entropy

IGNORE_INDEX = -100


def mask_tokens(ids: Tensor, *, mask_id: int, vocab_size: int, prob: float = 0.15,
                key_padding_mask: Tensor | None = None, special_ids: tuple[int, ...] = (),
                word_ids: Tensor | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``ids (B, T)`` -> ``(inputs (B, T), labels (B, T))`` with BERT's 80/10/10 corruption.

    Args:
        mask_id: the ``[MASK]`` id. vocab_size: random replacements are drawn from ``[0, vocab_size)``
            (special ids excluded).
        prob: share of candidate tokens (or words) picked.
        key_padding_mask: ``(B, T)`` bool, True = real token; padding is never picked.
        special_ids: ids never picked nor drawn as replacements ([CLS], [SEP], [PAD], [MASK] ...).
        word_ids: ``(B, T)`` int, the word each token belongs to (pieces of one word share an id); picks whole
            words.
        generator: the random stream (seeded by the caller: same seed, same masks).

    Raises:
        ValueError: ``prob`` outside (0, 1], shapes that do not match, or ``mask_id`` outside the vocabulary.
    """
    if not 0.0 < prob <= 1.0:
        raise ValueError(f"masking probability must be in (0, 1], got {prob}")
    if ids.dim() != 2 or (word_ids is not None and word_ids.shape != ids.shape):
        raise ValueError(f"ids must be (batch, tokens) and word_ids of the same shape, got {tuple(ids.shape)}"
                         + ("" if word_ids is None else f" and {tuple(word_ids.shape)}"))
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id={mask_id} is outside the vocabulary of {vocab_size} ids; give the model a [MASK] id")
    candidate = torch.ones_like(ids, dtype=torch.bool) if key_padding_mask is None else key_padding_mask.clone()
    for s in (*special_ids, mask_id):
        candidate &= ids != s
    draw = lambda: torch.rand(ids.shape, generator=generator, device=ids.device)  # noqa: E731
    if word_ids is None:
        picked = candidate & (draw() < prob)
    else:  # one draw per (row, word), shared by the word's pieces
        per_word = torch.rand(ids.shape[0], int(word_ids.max()) + 1, generator=generator, device=ids.device) < prob
        picked = candidate & per_word.gather(1, word_ids.long())
    how = draw()
    to_mask, to_random = picked & (how < 0.8), picked & (how >= 0.8) & (how < 0.9)
    random = torch.randint(0, vocab_size, ids.shape, generator=generator, device=ids.device)
    bad = torch.zeros_like(ids, dtype=torch.bool)  # a random replacement is never a special token:
    for s in (*special_ids, mask_id):
        bad |= random == s
    random = torch.where(bad, ids, random)  # those keep the original instead
    inputs = torch.where(to_mask, torch.full_like(ids, mask_id), torch.where(to_random, random, ids))
    labels = torch.where(picked, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, labels


def mlm_step(model: nn.Module, batch: dict[str, Tensor],
             label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Cross-entropy at the picked positions, in nats per picked token (``label_smoothing`` as in
    :func:`~attnlab.objectives.seq2seq.seq2seq_step`; the ``loss`` metric is the plain cross-entropy).

    Args:
        model: an :class:`~attnlab.models.Encoder` (or a DDP wrapper of one): called as
            ``model(idx, key_padding_mask, mlm_positions=picked)`` it returns logits of the picked positions only
            ``(N, V)``, so the vocabulary projection runs on ~15% of the tokens (BERT's own ``gather_indexes``).
        batch: ``{"idx": (B, T) corrupted ids, "labels": (B, T) originals or -100, ["key_padding_mask": (B, T)]}``
            (from :func:`mask_tokens`).

    Returns:
        ``loss`` and detached metrics ``{"loss", "bits_per_token", "masked_accuracy", "masked_tokens"}`` (a batch
        with nothing picked gives a zero loss and accuracy).

    Raises:
        TypeError: the model has no masked-LM head. ValueError: ``labels`` not shaped like ``idx``.
    """
    if not hasattr(getattr(model, "module", model), "mlm_head"):
        raise TypeError(f"the mlm objective needs an encoder with a masked-LM head (Encoder), got {type(model).__name__}")
    idx, labels = batch["idx"], batch["labels"]
    if labels.shape != idx.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must have the shape of idx {tuple(idx.shape)}")
    picked = labels != IGNORE_INDEX
    logits = model(idx, batch.get("key_padding_mask"), mlm_positions=picked)  # (N, V)
    target = labels[picked]
    if target.numel() == 0:
        zero = logits.float().sum() * 0.0
        return zero, {"loss": zero.detach(), "bits_per_token": zero.detach(), "masked_accuracy": zero.detach(),
                      "masked_tokens": picked.sum()}
    loss, d = smoothed_cross_entropy(logits, target, label_smoothing)
    acc = (logits.detach().argmax(-1) == target).float().mean()
    return loss, {"loss": d, "bits_per_token": d / math.log(2), "masked_accuracy": acc, "masked_tokens": picked.sum()}
