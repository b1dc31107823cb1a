"""Build-time probes: does a kernel run in the place a vision model puts it (a grid with prefix tokens, cross-attention
to a strided key grid ...)? One tiny call with the block's real context answers it, so an unfit kernel fails when the
model is built, with the names of the kernels that fit, instead of at the first forward."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..attention.capabilities import CapabilityError
from ..attention.context import AttentionContext


def probe_failure(kernel: nn.Module, heads: int, head_dim: int, tokens: int, kv_tokens: int,
                  ctx: AttentionContext) -> str:
    """Why ``kernel`` cannot attend from ``tokens`` queries to ``kv_tokens`` keys under ``ctx`` ("" if it can)."""
    q = torch.randn(1, heads, tokens, head_dim)
    kv = torch.randn(1, heads, kv_tokens, head_dim)
    was_training = kernel.training
    try:
        with torch.no_grad():
            kernel.eval()(q, kv, kv, dataclasses.replace(ctx))
    except (ValueError, CapabilityError) as e:
        return str(e).split(";")[0]
    finally:
        kernel.train(was_training)
    return ""


def kernels_serving(tokens: int, kv_tokens: int, ctx: AttentionContext) -> list[str]:
    """Registered kernels (default options) that run bidirectionally from ``tokens`` to ``kv_tokens`` under ``ctx``."""
    from ..attention.registry import build_attention, list_attention

    ok = []
    for name in list_attention():
        structural = dict(num_heads=2, num_kv_heads=2, head_dim=8, max_seq_len=max(tokens, kv_tokens))
        try:
            kernel = build_attention(name, structural=structural)
        except (ValueError, TypeError):
            continue
        if kernel.capabilities.bidirectional and not probe_failure(kernel, 2, 8, tokens, kv_tokens, ctx):
            ok.append(name)
    return ok


def check_prefix_tokens(shells: list[nn.Module], tokens: int, grid: tuple[int, int], model: str) -> None:
    """Every kernel of ``shells`` (attention shells) must run on ``tokens`` = prefix tokens + the ``grid``: tried once
    per kernel name, so a grid kernel that cannot place a class token fails at build time.

    Raises:
        CapabilityError: naming the kernel, ``pooling='mean'`` and the kernels that take prefix tokens.
    """
    ctx, failures = AttentionContext(causal=False, grid=grid), {}
    for shell in shells:
        name = shell.kernel.name
        if name not in failures:
            failures[name] = probe_failure(shell.kernel, shell.num_heads, shell.head_dim, tokens, tokens, ctx)
    bad = {name: why for name, why in failures.items() if why}
    if bad:
        name, why = next(iter(bad.items()))
        raise CapabilityError(
            f"attention {name!r} cannot place the {model}'s [CLS] token on the {grid[0]}x{grid[1]} patch grid ({why}); "
            f"build the {model} with pooling='mean' (no class token: every grid kernel runs), or use a kernel that "
            f"takes prefix tokens: {kernels_serving(tokens, tokens, ctx)}")
