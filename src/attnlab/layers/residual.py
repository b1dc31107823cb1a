"""Residual adds deferred into the following norm: one native pass per add under bf16 autocast on CPU.

A pre-norm block computes ``x + attn(norm(x))`` then ``x + mlp(norm(x))``. Instead of adding the MLP
output to the residual stream and then normalising it in the next block (two passes over ``(B, T, D)``),
a block that supports it hands its MLP output on *unsummed* ("pending"), and the next block's first norm
adds and normalises in one pass (:meth:`~attnlab.layers.norms.MatmulInputLayerNorm.add_and_norm`). The
result is exactly the same in fp32; the stack adds the last pending output itself.

A block opts in with ``defers_residual = True`` and a ``forward_pending(x, pending, *args)`` method that
returns ``(residual, branch)``; hooked blocks run normally (``forward_pending`` bypasses ``__call__``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from .norms import MatmulInputLayerNorm


def add_and_norm(norm: nn.Module, x: Tensor, branch: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(x + branch, norm(x + branch))`` with ``x, branch (B, T, D)``; ``branch=None`` adds nothing."""
    if branch is None:
        return x, norm(x)
    if isinstance(norm, MatmulInputLayerNorm):
        return norm.add_and_norm(x, branch)
    x = x + branch
    return x, norm(x)


def defers_residual(block: nn.Module) -> bool:
    """True for a block that opted in (``defers_residual``) and carries no forward hooks."""
    return bool(getattr(type(block), "defers_residual", False)) and not (block._forward_hooks or block._forward_pre_hooks)


def run_residual_stack(blocks: Sequence[nn.Module], x: Tensor, layer_args: Callable[[int], tuple]) -> Tensor:
    """Run ``blocks`` on ``x (B, T, D)``; block ``i`` gets ``block(x, *layer_args(i))``, with residual adds
    deferred between blocks that support it. Returns ``(B, T, D)``."""
    pending = None  # the previous block's branch output, not yet added to x
    for i, block in enumerate(blocks):
        args = layer_args(i)
        if defers_residual(block):
            x, pending = block.forward_pending(x, pending, *args)
        else:
            x, pending = block(x if pending is None else x + pending, *args), None
    return x if pending is None else x + pending
