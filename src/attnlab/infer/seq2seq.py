"""Generation for encoder-decoder models: greedy, sampling and beam search, all on the decoding caches.

The source is encoded once; each step feeds only the newest target token, with the self-attention cache
(keys/values of the target so far) and the cross-attention cache (the memory's keys/values, projected
once). Beam search (:mod:`.beam`) follows Hugging Face ``generate(num_beams=K)``: the same weights give the same
tokens (tested against transformers' T5).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .beam import beam_search


def _check(model: nn.Module, src: Tensor, max_new_tokens: int, num_beams: int, temperature: float) -> None:
    if not hasattr(model, "decode") or not hasattr(model, "new_cache"):
        raise TypeError(f"generate_seq2seq needs an encoder-decoder model (EncoderDecoder), got {type(model).__name__}")
    if src.dim() != 2 or src.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"src must be integer token ids of shape (batch, tokens), got {tuple(src.shape)} {src.dtype}")
    if max_new_tokens < 1 or num_beams < 1:
        raise ValueError(f"max_new_tokens and num_beams must be >= 1, got {max_new_tokens} and {num_beams}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if num_beams > 1 and temperature > 0:
        raise ValueError("beam search is deterministic: use temperature=0 with num_beams > 1")


@torch.no_grad()
def generate_seq2seq(model: nn.Module, src: Tensor, *, bos_id: int, eos_id: int | None = None,
                     max_new_tokens: int = 32, src_key_padding_mask: Tensor | None = None, num_beams: int = 1,
                     temperature: float = 0.0, length_penalty: float = 1.0,
                     generator: torch.Generator | None = None) -> Tensor:
    """Decode ``src (B, S)`` into ``(B, L)`` target ids, ``L <= max_new_tokens`` (after ``eos_id``: ``eos_id``).

    Args:
        bos_id: the decoder's start token. eos_id: stop token (``None``: always ``max_new_tokens``).
        num_beams: 1 = greedy (``temperature=0``) or sampling (``temperature > 0``); more = beam search.
        src_key_padding_mask: ``(B, S)`` bool, True = real source token.

    Raises:
        TypeError: not an encoder-decoder. ValueError: bad ids, sizes or temperature.
    """
    _check(model, src, max_new_tokens, num_beams, temperature)
    was_training = model.training
    model.eval()
    try:
        if num_beams > 1:
            return beam_search(model, src, src_key_padding_mask, bos_id, eos_id, max_new_tokens, num_beams,
                               length_penalty)
        return _sample(model, src, src_key_padding_mask, bos_id, eos_id, max_new_tokens, temperature, generator)
    finally:
        model.train(was_training)


def _sample(model, src, mask, bos_id, eos_id, steps, temperature, generator) -> Tensor:
    B = src.shape[0]
    memory = model.encode(src, mask)
    cache = model.new_cache(B, steps, device=src.device)
    token = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    out = []
    for t in range(steps):
        logits = model.decode(token, memory if t == 0 else None, mask, cache=cache)[:, -1].float()  # (B, V)
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        else:
            token = logits.argmax(dim=-1, keepdim=True)
        if eos_id is not None:
            token = torch.where(done[:, None], torch.full_like(token, eos_id), token)
            done |= token[:, 0] == eos_id
        out.append(token)
        if eos_id is not None and bool(done.all()):
            break
    return torch.cat(out, dim=1)
