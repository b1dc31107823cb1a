"""Autoregressive generation with the KV cache: greedy, temperature, top-k and nucleus (top-p) sampling."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Iterable

import torch
from torch import Tensor

from ..layers.embeddings import check_token_ids


def sample_next(logits: Tensor, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """``logits (B, V)`` -> next token ids ``(B,)``. ``temperature == 0`` is greedy (argmax).

    Raises:
        ValueError: a temperature that is negative, NaN or infinite, ``top_k`` not an integer >= 1, or ``top_p``
            outside ``(0, 1]`` (NaN included).
    """
    if isinstance(temperature, bool) or not isinstance(temperature, Real):
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {type(temperature).__name__}")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be >= 0 and finite (0 = greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, Integral)):
        raise ValueError(f"top_k must be an integer >= 1 (or None), got {top_k!r}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token once the mass before it already reaches top_p (the top token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, idx: Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, stop_tokens: Iterable[int] = (), generator: torch.Generator | None = None,
             use_cache: bool = True) -> Tensor:
    """Extend ``idx (B, T)`` by up to ``max_new_tokens`` tokens; returns prompt + new tokens ``(B, T + n)``.

    Uses the model's KV cache (one forward over the prompt, then one token at a time). When the
    sequence would outgrow ``max_seq_len`` the window slides: the last ``max_seq_len`` tokens are
    re-encoded at every step without the cache (exactly what a cache-free loop computes). Generation stops early
    once every row has produced a stop token. Same ``generator`` seed -> same tokens.

    Raises:
        ValueError: a model that is not a causal decoder (an encoder, a ViT), a prompt that is not
            ``(batch, tokens)`` with at least one row and one token, ``max_new_tokens`` not an integer >= 0, or
            a bad sampling argument (see :func:`sample_next`).
        TypeError: a prompt that is not a tensor of integers (names its type or dtype).
    """
    _check_decoder(model)
    check_token_ids(idx)
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"prompt must be (batch, tokens) with at least one token, got {tuple(idx.shape)}")
    if idx.shape[0] == 0:
        raise ValueError("prompt has no rows (batch of 0): give at least one sequence to continue")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, Integral):
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    was_training = model.training
    model.eval()
    max_len = model.cfg.max_seq_len
    stop = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=idx.device)
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    out = idx
    cache = model.new_cache(idx.shape[0], max_len, device=idx.device) if use_cache and idx.shape[1] <= max_len else None
    pending = out
    try:
        for _ in range(max_new_tokens):
            if cache is not None and cache[0].seen + pending.shape[1] > max_len:
                cache = None  # past the context: slide the window, re-encoding the last max_seq_len tokens
            if cache is None:
                logits = model(out[:, -max_len:])[:, -1]
            else:
                logits = model(pending, cache=cache)[:, -1]  # (B, V)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            nxt = torch.where(done, stop[0] if stop.numel() else nxt, nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            pending = nxt[:, None]
            if stop.numel():
                done |= torch.isin(nxt, stop)
                if bool(done.all()):
                    break
    finally:
        model.train(was_training)
    return out


def _check_decoder(model) -> None:
    """Raises ``ValueError`` unless ``model`` is a causal decoder with a KV cache (a GPT)."""
    if not getattr(model, "causal", False) or not callable(getattr(model, "new_cache", None)):
        raise ValueError(f"generate needs a causal decoder such as GPT (it predicts the next token); "
                         f"{type(model).__name__} is not one: for an encoder use attnlab.embed or model(ids), for an "
                         "encoder-decoder attnlab.infer.seq2seq.generate_seq2seq")
