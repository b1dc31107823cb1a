"""Tensor-level entry to the native Swin window attention (``csrc/window_fp32.c``): fp32 arithmetic on fp32 or bf16
tensors, forward and backward, on AVX-512 FMA.

In PyTorch, Swin's window attention (:class:`attnlab.attention.kernels.window.WindowAttention`, Liu et al. 2021)
gathers q, k and v into window order, runs two batched products around the bias add and the softmax, and gathers
the result back: six passes over memory around small products, and as many again in the backward. The native
kernel does each (image, window, head) whole in cache, reading the window's rows straight from the raster-order
tensors and writing its output rows (or gradient rows) back to their raster positions; the backward is
FlashAttention-2's from the forward's log-sum-exp, plus the bias gradient (``benchmarks/vision.py``: Swin-T in
fp32).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import load
from .documents_fp32 import FAMILY
from .marshal import (check_status, fake_gradients, gradient_buffers, gradient_results, shapes_fit, split_results,
                      strides, threads, token_major_like)

# Largest window the kernel takes (tokens): each thread holds a window's probabilities and score gradients whole.
MAX_WINDOW_TOKENS = 1024


def windows_attention_fp32(q: Tensor, k: Tensor, v: Tensor, order: Tensor, window_tokens: int,
                           bias: Tensor | None, scale: float) -> Tensor | None:
    """Softmax attention inside each window of ``window_tokens`` tokens of ``order`` on the native kernel,
    differentiable in q, k, v and ``bias`` (a backward with ``create_graph=True`` recomputes through
    :func:`windows_reference`, so gradient penalties work), or ``None`` when it cannot run these inputs (not
    CPU float32 or bfloat16, ``Dh`` not a multiple of 16 or above 256, windows over :data:`MAX_WINDOW_TOKENS`, the
    library unavailable); the caller then uses PyTorch. Arithmetic is fp32 throughout; bf16 inputs give bf16
    outputs and gradients, rounded once from fp32.

    Args:
        q: ``(B, H, T, Dh)``; k, v: ``(B, Hkv, T, Dh)`` (GQA heads grouped, not expanded), raster order.
        order: ``(T,)`` long, a permutation of the tokens: window ``w`` is ``order[w n : (w + 1) n]``.
        window_tokens: ``n``, dividing ``T``.
        bias: ``None`` or ``(H | 1, nW | 1, n, n)`` float, added to the scaled scores (``-inf`` forbids a pair).
        scale: the score scale.

    Returns:
        ``(B, H, T, Dh)`` in raster order (a transposed view of ``(B, T, H, Dh)`` memory).

    Raises:
        ValueError: windows that do not tile the tokens, or a bias of another shape.
    """
    if not usable(q, k, v) or window_tokens > MAX_WINDOW_TOKENS or load(FAMILY) is None:
        return None
    if bias is not None and (bias.device != q.device or bias.dtype != torch.float32):
        return None
    _check_layout(q, order, window_tokens, bias)
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))
    return attend_windows_fp32_op(q, k, v, order.to(device=q.device, dtype=torch.int64).contiguous(),
                                  window_tokens, bias, float(scale), training)[0]


def usable(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """CPU tensors, all float32 or all bfloat16, of the shapes :func:`~attnlab.native.marshal.shapes_fit` takes, with
    unit stride along ``Dh``."""
    if q.device.type != "cpu" or q.dtype not in (torch.float32, torch.bfloat16):
        return False
    return all(t.dtype == q.dtype and t.stride(3) == 1 for t in (q, k, v)) and shapes_fit(q, k, v)


def _check_layout(q: Tensor, order: Tensor, n: int, bias: Tensor | None) -> None:
    """The kernel trusts the window layout (a wrong one reads out of bounds), so it is checked here.

    Raises:
        ValueError: ``n`` not dividing ``T``, ``order`` not ``(T,)``, or ``bias`` not ``(H | 1, nW | 1, n, n)``.
    """
    _, H, T, _ = q.shape
    if n < 1 or T % n or tuple(order.shape) != (T,):
        raise ValueError(f"window attention: {T} tokens, windows of {n} and an order of shape {tuple(order.shape)}; "
                         "the windows must tile the tokens and the order list each token once")
    if bias is not None and (bias.dim() != 4 or bias.shape[0] not in (1, H) or bias.shape[1] not in (1, T // n)
                             or tuple(bias.shape[2:]) != (n, n)):
        raise ValueError(f"window attention: bias of shape {tuple(bias.shape)}, expected ({H} or 1, {T // n} or 1, "
                         f"{n}, {n})")


def _bias_strides(bias: Tensor | None, n: int) -> tuple[Tensor | None, int, int]:
    """The contiguous bias and its head and window strides in floats (0 where it broadcasts)."""
    if bias is None:
        return None, 0, 0
    bias = bias.contiguous()
    return bias, (n * n * bias.shape[1] if bias.shape[0] > 1 else 0), (n * n if bias.shape[1] > 1 else 0)


# torch.library operators, so torch.compile treats the kernels as opaque calls (see documents.py)
@torch.library.custom_op("attnlab::attend_windows_fp32", mutates_args=())
def attend_windows_fp32_op(q: Tensor, k: Tensor, v: Tensor, order: Tensor, window_tokens: int,
                           bias: Tensor | None, scale: float, with_lse: bool) -> tuple[Tensor, Tensor]:
    """``(out (B, H, T, Dh) view of (B, T, H, Dh) memory, lse (B, H, T) base-2 log-sum-exp or (0,))``."""
    B, H, T, Dh = q.shape
    n = window_tokens
    out = token_major_like(q)
    lse = torch.empty((B, H, T) if with_lse else (0,), dtype=torch.float32, device=q.device)
    held = strides(q, k, v, out, lse) if with_lse else strides(q, k, v, out)  # alive during the call
    bias, bhs, bws = _bias_strides(bias, n)
    ptrs = [t.data_ptr() for t in (q, k, v, out, *held[:4], order)]
    lse_args = (lse.data_ptr(), held[4].data_ptr()) if with_lse else (None, None)
    check_status(load(FAMILY).attnlab_attend_windows_f32(
        *ptrs, None if bias is None else bias.data_ptr(), bhs, bws, *lse_args, B, T // n, n, H, k.shape[1], Dh,
        int(q.dtype == torch.bfloat16), scale, threads(B * (T // n) * H)))
    return out, lse


@attend_windows_fp32_op.register_fake
def _(q, k, v, order, window_tokens, bias, scale, with_lse):
    B, H, T, _ = q.shape
    return token_major_like(q), q.new_empty((B, H, T) if with_lse else (0,))


@torch.library.custom_op("attnlab::attend_windows_fp32_backward", mutates_args=())
def attend_windows_fp32_backward_op(q: Tensor, k: Tensor, v: Tensor, dout: Tensor, lse: Tensor, order: Tensor,
                                    window_tokens: int, bias: Tensor | None, scale: float,
                                    bias_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gradients of q, k and v as :func:`~attnlab.native.marshal.gradient_results` packs them (``dq (B, H, T,
    Dh)``, ``dk, dv (B, Hkv, T, Dh)``, or one buffer holding all three), and ``dbias`` (the bias's shape; ``(0,)``
    unless ``bias_grad``), from the forward's log-sum-exp."""
    B, H, T, Dh = q.shape
    n, Hkv = window_tokens, k.shape[1]
    dout = (dout if dout.stride(3) == 1 else dout.contiguous()).to(q.dtype)
    dq, dk, dv, joined = gradient_buffers(q, Hkv)
    tensors = (q, k, v, dout, lse, dq, dk, dv)
    held = strides(*tensors)  # alive during the call
    bias, bhs, bws = _bias_strides(bias, n)
    nthreads = threads(B * (T // n) * H)
    partial = (torch.zeros((nthreads, *bias.shape), dtype=torch.float32, device=q.device) if bias_grad
               else q.new_empty(0))  # one block per thread: they sum below
    ptrs = [t.data_ptr() for t in (*tensors, *held, order)]
    check_status(load(FAMILY).attnlab_attend_windows_f32_backward(
        *ptrs, None if bias is None else bias.data_ptr(), bhs, bws, partial.data_ptr() if bias_grad else None,
        bias.numel() if bias_grad else 0, B, T // n, n, H, Hkv, Dh, int(q.dtype == torch.bfloat16), scale, nthreads))
    return (*gradient_results(dq, dk, dv, joined, Hkv), partial.sum(0) if bias_grad else q.new_empty(0))


@attend_windows_fp32_backward_op.register_fake
def _(q, k, v, dout, lse, order, window_tokens, bias, scale, bias_grad):
    return (*fake_gradients(q, k, v), bias.new_empty(bias.shape) if bias_grad else q.new_empty(0))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, order, window_tokens, bias, scale, with_lse = inputs
    if not with_lse:
        raise RuntimeError("the native window attention backward needs the forward's log-sum-exp (with_lse=True)")
    ctx.save_for_backward(q, k, v, output[1], order, bias)
    ctx.window_tokens, ctx.scale = window_tokens, scale


def windows_reference(q: Tensor, k: Tensor, v: Tensor, order: Tensor, n: int, bias: Tensor | None,
                      scale: float) -> Tensor:
    """The kernel's result by PyTorch operations (differentiable to any order; same arguments as
    :func:`windows_attention_fp32`, fp32 arithmetic, ``q``'s dtype out)."""
    B, H, T, D = q.shape
    inv = torch.argsort(order)
    qw, kw, vw = (t.float().index_select(2, order).repeat_interleave(H // t.shape[1], 1).reshape(B, H, T // n, n, D)
                  for t in (q, k, v))
    scores = scale * qw @ kw.transpose(-1, -2)
    if bias is not None:
        scores = scores + bias.float()
    out = (scores.softmax(-1) @ vw).reshape(B, H, T, D).index_select(2, inv)
    return out.to(q.dtype)


def _backward(ctx, dout: Tensor, _dlse: Tensor):
    q, k, v, lse, order, bias = ctx.saved_tensors
    bias_grad = bias is not None and ctx.needs_input_grad[5]
    if torch.is_grad_enabled():  # backward(create_graph=True): a gradient that is itself differentiable
        wanted = [t for t, w in zip((q, k, v, bias), (*ctx.needs_input_grad[:3], bias_grad)) if w]
        grads = iter(torch.autograd.grad(windows_reference(q, k, v, order, ctx.window_tokens, bias, ctx.scale),
                                         wanted, dout, create_graph=True))
        dq, dk, dv, dbias = (next(grads) if w else None
                             for w in (*ctx.needs_input_grad[:3], bias_grad))
        return dq, dk, dv, None, None, dbias, None, None
    first, dk, dv, dbias = attend_windows_fp32_backward_op(q, k, v, dout, lse, order, ctx.window_tokens, bias,
                                                           ctx.scale, bias_grad)
    dq, dk, dv = split_results(first, dk, dv)
    return dq, dk, dv, None, None, dbias if bias_grad else None, None, None


attend_windows_fp32_op.register_autograd(_backward, setup_context=_setup_context)
