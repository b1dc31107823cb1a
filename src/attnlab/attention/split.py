"""A split of the last dimension whose backward reuses adjacent gradients instead of concatenating them.

The attention shell computes q, k and v with one fused product and splits its ``(B, T, (H + 2 Hkv) Dh)`` output.
PyTorch's split backward always concatenates the three gradients into a new tensor: a full read and write of the
projection's gradient (~2% of a Swin-T fp32 training step). The native attention backwards write dq, dk and dv as
slices of one buffer laid out exactly like that output (:func:`attnlab.native.marshal.gradient_buffers`); this
split's backward recognises that case and returns the buffer itself. Any other gradients are concatenated as
before, so the result is the same either way.
"""

from __future__ import annotations

import torch
from torch import Tensor


def split_last(x: Tensor, sizes: list[int]) -> tuple[Tensor, ...]:
    """``x.split(sizes, dim=-1)`` (views of ``x``, ``x`` 3-D ``(B, T, sum(sizes))``); when ``x`` needs a gradient,
    the backward returns adjacent gradients without a copy (see the module docstring).

    Raises:
        ValueError: ``sizes`` that do not add up to ``x``'s last dimension.
    """
    if sum(sizes) != x.shape[-1]:
        raise ValueError(f"split_last: sizes {sizes} add up to {sum(sizes)}, not the last dimension {x.shape[-1]}")
    if x.dim() != 3 or not (torch.is_grad_enabled() and x.requires_grad):
        return x.split(sizes, dim=-1)
    return _SplitLast.apply(x, tuple(sizes))


class _SplitLast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: tuple[int, ...]) -> tuple[Tensor, ...]:
        ctx.sizes, ctx.shape = sizes, x.shape
        return x.split(list(sizes), dim=-1)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        joined = _adjacent(grads, ctx.sizes)
        if joined is not None:
            return joined, None
        full = [g if g is not None else _zeros_for(ctx.shape, size, grads) for g, size in zip(grads, ctx.sizes)]
        return torch.cat(full, dim=-1), None


def _zeros_for(shape: torch.Size, size: int, grads: tuple[Tensor | None, ...]) -> Tensor:
    """Zeros standing in for a part that received no gradient."""
    like = next(g for g in grads if g is not None)
    return like.new_zeros(*shape[:-1], size)


def _adjacent(grads: tuple[Tensor | None, ...], sizes: tuple[int, ...]) -> Tensor | None:
    """The ``(B, T, sum(sizes))`` tensor whose consecutive column blocks the gradients are, when they are (same
    storage, rows of one common stride, each block starting where the previous ends), else None."""
    if any(g is None for g in grads):
        return None
    first = grads[0]
    B, T, _ = first.shape
    width = sum(sizes)
    row = (T * width, width, 1)
    storage = first.untyped_storage().data_ptr()
    offset = first.storage_offset()
    for g, size in zip(grads, sizes):
        if (g.dtype != first.dtype or g.device != first.device or tuple(g.shape) != (B, T, size)
                or (B > 1 and g.stride(0) != row[0]) or (T > 1 and g.stride(1) != row[1]) or g.stride(2) != 1
                or g.untyped_storage().data_ptr() != storage or g.storage_offset() != offset):
            return None
        offset += size
    return first.as_strided((B, T, width), row)
