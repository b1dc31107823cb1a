"""fp32 training of a Transformer MLP, ``fc_out(gelu(fc_in(x)))``, on oneDNN with a backward that reuses its own
hidden-size buffer.

Why: a Transformer MLP's hidden activation is its largest tensor (4 x the width per token: 38.5 MB for a batch
of 8 in Swin-T's first stage). Composed from two linear layers and ``F.gelu``, its backward allocates two of them,
``dH = dY W_out`` and then ``dA = dH * gelu'(A)``. glibc serves allocations that large with fresh ``mmap`` pages,
whose first touch costs about as much as the pass that writes them; :class:`FusedMLP`'s backward writes ``dA``
over ``dH`` (nothing else holds ``dH``), one fresh buffer instead of two. Measured on Swin-T's first-stage MLP
(25,088 tokens x 96 -> 384 -> 96, 2 threads): forward + backward 1.08x faster; 1.01-1.02x at the later stages
and at ViT-B/16's MLP, where the buffers are smaller.

The products are those of :func:`attnlab.native.linear.linear`'s oneDNN path (output and input gradients on
oneDNN, weight gradients on PyTorch), so results and gradients equal the composed layers' to fp32 summation order
and the GELU's accuracy. The exact (erf) GELU (Hendrycks & Gimpel 2016) runs on the pointwise native library
where it loads: one pass writes ``gelu(A)`` and, over ``A``, the slope ``gelu'(A)``; the backward multiplies by
the slope and sums the bias gradient in one pass (PyTorch's ``gelu_backward`` evaluates erf and exp again, then a
column sum reads the product once more): Swin-T's training step 1.01x faster. The tanh form, or no native
library, takes PyTorch's GELU. A backward that builds a graph (``create_graph=True``) recomputes the MLP with
differentiable PyTorch ops; forward-mode AD gets the tangent from the chain rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import load
from .linear import onednn_fp32, onednn_linear
from .marshal import check_status, grad_wanted, threads

APPROXIMATE = {"gelu": "none", "gelu_tanh": "tanh"}  # attnlab's activation name -> F.gelu's approximate=


def mlp_fp32(x: Tensor, w_in: Tensor, b_in: Tensor | None, w_out: Tensor, b_out: Tensor | None,
             activation: str) -> Tensor | None:
    """``F.linear(gelu(F.linear(x, w_in, b_in)), w_out, b_out)`` through :class:`FusedMLP`, or None where it does
    not apply: an activation other than ``"gelu"``/``"gelu_tanh"``, no gradient wanted, or either product
    outside :func:`attnlab.native.linear.onednn_fp32` (fp32 on an AVX-512 CPU, large enough, plain eager tensors).

    Shapes: ``x (..., D)``, ``w_in (H, D)``, ``b_in (H,)``, ``w_out (D', H)``, ``b_out (D',)`` -> ``(..., D')``.
    """
    if (activation not in APPROXIMATE or not grad_wanted(x, w_in, b_in, w_out, b_out)
            or not onednn_fp32(x, w_in, b_in) or x.shape[-1] != w_in.shape[1] or w_out.dim() != 2
            or w_out.shape[1] != w_in.shape[0]):
        return None
    hidden = x.new_empty(()).expand(*x.shape[:-1], w_in.shape[0])  # a shape stand-in: no memory
    if not onednn_fp32(hidden, w_out, b_out):
        return None
    return FusedMLP.apply(x, w_in, b_in, w_out, b_out, APPROXIMATE[activation])


def _rows(t: Tensor) -> Tensor:
    """``(..., C) -> (M, C)``, contiguous (a view where the layout allows)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.is_contiguous() else t2.contiguous()


class FusedMLP(torch.autograd.Function):
    """``fc_out(gelu(fc_in(x)))`` whose backward writes the GELU's gradient over the hidden gradient's buffer
    (see the module docstring). Saves ``x``, both weights, the pre-activation ``A`` and the activation ``H``,
    as the composed layers do."""

    @staticmethod
    def forward(ctx, x: Tensor, w_in: Tensor, b_in: Tensor | None, w_out: Tensor, b_out: Tensor | None,
                approximate: str) -> Tensor:
        a = onednn_linear(x, w_in, b_in)  # (..., H)
        h, slope = _gelu_with_slope(a, approximate)
        kept = a if slope is None else slope  # the backward needs gelu'(A): A itself, or the slope in its place
        ctx.save_for_backward(x, w_in, b_in, w_out, b_out, kept, h)
        ctx.save_for_forward(x, w_in, w_out, kept, h)
        ctx.approximate, ctx.has_slope = approximate, slope is not None
        return onednn_linear(h, w_out, b_out)

    @staticmethod
    def jvp(ctx, dx, dw_in, db_in, dw_out, db_out, _approximate):
        x, w_in, w_out, kept, h = ctx.saved_tensors
        da = _sum(F.linear(dx, w_in) if dx is not None else None, F.linear(x, dw_in) if dw_in is not None else None,
                  db_in)
        if da is None:
            dh = None
        else:
            da = da.expand_as(kept)
            dh = da * kept if ctx.has_slope else torch.ops.aten.gelu_backward(da, kept, approximate=ctx.approximate)
        return _sum(F.linear(dh, w_out) if dh is not None else None,
                    F.linear(h, dw_out) if dw_out is not None else None, db_out)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, w_in, b_in, w_out, b_out, kept, h = ctx.saved_tensors
        wanted = ctx.needs_input_grad[:5]
        if torch.is_grad_enabled():  # create_graph: a graph autograd can differentiate again
            return (*_recomputed_grads(dy, (x, w_in, b_in, w_out, b_out), wanted, ctx.approximate), None)
        dy2 = _rows(dy)  # (M, D')
        dw_out = dy2.t() @ h.view(-1, h.shape[-1]) if wanted[3] else None  # (D', M) @ (M, H)
        db_out = dy2.sum(0) if wanted[4] else None
        dx = dw_in = db_in = None
        if any(wanted[:3]):
            g = torch.ops.mkldnn._linear_pointwise(dy2, w_out.t(), None, "none", [], "")  # dH (M, H)
            # dA = dH * gelu'(A), written over dH: g is ours alone (an exact alias is safe for an elementwise op)
            if ctx.has_slope:
                db_in = _times_slope_(g, kept.view(-1, kept.shape[-1]), wanted[2])
            else:
                torch.ops.aten.gelu_backward.grad_input(g, kept.view(-1, kept.shape[-1]),
                                                        approximate=ctx.approximate, grad_input=g)
                db_in = g.sum(0) if wanted[2] else None
            if wanted[0]:
                dx = torch.ops.mkldnn._linear_pointwise(g, w_in.t(), None, "none", [], "").view(x.shape)
            dw_in = g.t() @ _rows(x) if wanted[1] else None  # (H, M) @ (M, D)
        return dx, dw_in, db_in, dw_out, db_out, None


def _gelu_with_slope(a: Tensor, approximate: str) -> tuple[Tensor, Tensor | None]:
    """``(gelu(a), gelu'(a))`` from the native kernel in one pass for the exact GELU (erf after Abramowitz &
    Stegun 7.1.26; measured: gelu within 3.6e-7 (1 + |a|) of the formula, PyTorch's fp32 GELU within 2.7e-7
    (1 + |a|); the slope within 5.4e-7), the slope written over ``a`` (the caller's own buffer: a
    fresh one of this size would cost page faults); ``(F.gelu(a), None)`` for the tanh form or without the
    kernel. The slope makes the backward one multiply per element instead of PyTorch's ``gelu_backward``."""
    lib = load("pointwise") if approximate == "none" and a.is_contiguous() else None
    if lib is None:
        return F.gelu(a, approximate=approximate), None
    h = torch.empty_like(a)
    rows = a.numel() // max(1, a.shape[-1])
    check_status(lib.attnlab_gelu_slope_fp32(a.data_ptr(), a.numel(), h.data_ptr(), a.data_ptr(), threads(rows)),
                 "the native GELU kernel")
    return h, a


def _times_slope_(g: Tensor, slope: Tensor, with_bias: bool) -> Tensor | None:
    """``g *= slope`` in place (both contiguous ``(M, H)`` fp32) and, with ``with_bias``, the column sums of the
    product (the bias gradient, ``(H,)``) from the same pass.

    Raises:
        MemoryError: the kernel could not allocate its partial sums.
    """
    rows, n = g.shape
    db = g.new_empty(n) if with_bias else None
    check_status(load("pointwise").attnlab_gelu_bwd_fp32(slope.data_ptr(), g.data_ptr(), rows, n,
                                                         None if db is None else db.data_ptr(), threads(rows)),
                 "the native GELU backward", "its partial-sum buffers")
    return db


def _sum(*parts: Tensor | None) -> Tensor | None:
    present = [p for p in parts if p is not None]
    return sum(present[1:], present[0]) if present else None


def _recomputed_grads(dy: Tensor, inputs: tuple, wanted: tuple, approximate: str) -> list[Tensor | None]:
    """The gradients of the MLP recomputed with differentiable PyTorch ops (for ``create_graph=True``)."""
    x, w_in, b_in, w_out, b_out = inputs
    y = F.linear(F.gelu(F.linear(x, w_in, b_in), approximate=approximate), w_out, b_out)
    chosen = [t for t, w in zip(inputs, wanted) if w]
    grads = iter(torch.autograd.grad(y, chosen, dy, create_graph=True))
    return [next(grads) if w else None for w in wanted]
