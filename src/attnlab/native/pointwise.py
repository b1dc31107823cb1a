"""Fused LayerNorm and bias + GELU on the native kernels (``csrc/pointwise.c``) for bf16 training on CPU.

Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` PyTorch runs LayerNorm in fp32, writes an fp32
result and casts it to bf16 for the next matmul (two passes, and two more backwards), and an MLP's
``gelu(h + b)`` costs an add, the GELU and, backwards, the GELU derivative and a column sum for the bias
gradient. The kernels here do each in one pass: :func:`layer_norm_bf16` (Ba et al. 2016) reads the fp32
residual stream and writes bf16 (:func:`add_layer_norm_bf16` first adds a block's bf16 output to the
stream); :func:`bias_gelu_bf16` applies the bias and the exact erf GELU (Hendrycks & Gimpel 2016) to a
bf16 matmul output and its backward also returns the bias gradient.

Both are PyTorch operators (``torch.library``) with autograd, so they work under ``torch.compile``; both
return ``None`` when they cannot run (no native library, not on CPU, other dtypes) and the caller uses
PyTorch. Results equal PyTorch's to bf16 rounding (fp32 arithmetic throughout; the erf in GELU has an
absolute error <= 1.5e-7).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import load
from .marshal import check_status, grad_wanted, pointer, threads

FAMILY = "pointwise"


def _check(status: int) -> None:
    check_status(status, "a native pointwise kernel", "its partial-sum buffers")


def autocast_bf16_cpu() -> bool:
    """``torch.autocast("cpu", dtype=torch.bfloat16)`` is active."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


# ---- LayerNorm: fp32 in, bf16 out (optionally after the residual add) ---------------------------------------


def _norm_params_ok(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() == 0 or x.shape[-1] == 0 or x.numel() == 0:
        return False
    if any(p is not None and (p.dtype != torch.float32 or p.shape != x.shape[-1:]) for p in (weight, bias)):
        return False
    return load(FAMILY) is not None


def layer_norm_bf16(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor | None:
    """LayerNorm over the last axis of fp32 ``x (..., D)`` with fp32 ``weight``/``bias`` ``(D,)`` (or None),
    returned in bf16 ``(..., D)``; ``None`` when the native kernel cannot run these inputs."""
    if not _norm_params_ok(x, weight, bias):
        return None
    return layer_norm_op(x.contiguous(), None, weight, bias, float(eps))[0]


def add_layer_norm_bf16(x: Tensor, branch: Tensor, weight: Tensor | None, bias: Tensor | None,
                        eps: float) -> tuple[Tensor, Tensor] | None:
    """A pre-norm block's residual add and the next LayerNorm in one pass: ``h = x + branch`` (fp32 ``x``,
    bf16 ``branch``, both ``(..., D)``) and ``LayerNorm(h)`` in bf16 -> ``(h, normed)``. The backward
    likewise adds the residual stream's gradient of ``h`` to the LayerNorm's and rounds the branch's
    gradient to bf16 in the same pass. ``None`` when the native kernel cannot run these inputs."""
    if branch.dtype != torch.bfloat16 or branch.shape != x.shape or not _norm_params_ok(x, weight, bias):
        return None
    y, _, _, h = layer_norm_op(x.contiguous(), branch.contiguous(), weight, bias, float(eps))
    return h, y


@torch.library.custom_op("attnlab::layer_norm_bf16", mutates_args=())
def layer_norm_op(x: Tensor, add: Tensor | None, weight: Tensor | None, bias: Tensor | None,
                  eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(y bf16 (..., D), mean (rows,), rstd (rows,), x + add fp32 (empty without add))`` for contiguous
    fp32 ``x`` and bf16 ``add``."""
    D = x.shape[-1]
    rows = x.numel() // D
    y = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
    mean, rstd = x.new_empty(rows), x.new_empty(rows)
    total = torch.empty_like(x) if add is not None else x.new_empty(0)
    total_ptr = total.data_ptr() if add is not None else None  # NULL: no residual add
    _check(load(FAMILY).attnlab_layer_norm_fwd(x.data_ptr(), pointer(add), total_ptr, rows, D, pointer(weight),
                                               pointer(bias), eps, y.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                                               threads(rows)))
    return y, mean, rstd, total


@layer_norm_op.register_fake
def _(x, add, weight, bias, eps):
    rows = x.numel() // x.shape[-1]
    total = torch.empty_like(x) if add is not None else x.new_empty(0)
    return torch.empty_like(x, dtype=torch.bfloat16), x.new_empty(rows), x.new_empty(rows), total


@torch.library.custom_op("attnlab::layer_norm_bf16_backward", mutates_args=())
def layer_norm_backward_op(dy: Tensor, dtotal: Tensor | None, x: Tensor, mean: Tensor, rstd: Tensor,
                           weight: Tensor | None, with_add: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dx fp32 like x, dadd bf16 (empty without with_add), dweight (D,), dbias (D,))`` from the bf16
    output gradient; ``x`` is the normalised input (``x + add`` with the add), ``dtotal`` the gradient
    reaching ``x + add`` from elsewhere (None: zero)."""
    D = x.shape[-1]
    rows = x.numel() // D
    dy = dy.to(torch.bfloat16).contiguous()
    dtotal = None if dtotal is None else dtotal.to(torch.float32).contiguous()
    dx = torch.empty_like(x)
    dadd = torch.empty_like(x, dtype=torch.bfloat16) if with_add else x.new_empty(0, dtype=torch.bfloat16)
    dw, db = x.new_empty(D), x.new_empty(D)
    _check(load(FAMILY).attnlab_layer_norm_bwd(x.data_ptr(), dy.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                                               pointer(weight), pointer(dtotal), dadd.data_ptr() if with_add else None,
                                               rows, D, dx.data_ptr(), dw.data_ptr(), db.data_ptr(), threads(rows)))
    return dx, dadd, dw, db


@layer_norm_backward_op.register_fake
def _(dy, dtotal, x, mean, rstd, weight, with_add):
    D = x.shape[-1]
    dadd = torch.empty_like(x, dtype=torch.bfloat16) if with_add else x.new_empty(0, dtype=torch.bfloat16)
    return torch.empty_like(x), dadd, x.new_empty(D), x.new_empty(D)


def _layer_norm_setup(ctx, inputs, output) -> None:
    x, add, weight, bias, _ = inputs
    ctx.with_add, ctx.has_bias = add is not None, bias is not None
    ctx.save_for_backward(output[3] if ctx.with_add else x, output[1], output[2], weight)


def _layer_norm_backward(ctx, dy: Tensor, _dmean, _drstd, dtotal):
    normed_input, mean, rstd, weight = ctx.saved_tensors
    if dy is None:  # only x + add was used downstream
        dy = torch.zeros_like(normed_input, dtype=torch.bfloat16)
    dx, dadd, dw, db = layer_norm_backward_op(dy, dtotal if ctx.with_add else None, normed_input, mean, rstd, weight,
                                              ctx.with_add)
    return (dx, dadd if ctx.with_add else None, dw if weight is not None else None, db if ctx.has_bias else None,
            None)


layer_norm_op.register_autograd(_layer_norm_backward, setup_context=_layer_norm_setup)


# ---- bias + GELU: bf16 in, bf16 out ------------------------------------------------------------------------


def bias_gelu_bf16(h: Tensor, bias: Tensor | None) -> Tensor | None:
    """``gelu(h + bias)`` (exact erf GELU) for bf16 ``h (..., N)`` and ``bias (N,)`` of any float dtype (the
    sum is taken in fp32), in bf16; ``None`` when the native kernel cannot run these inputs. When a gradient
    is wanted the forward also keeps the derivative ``gelu'(h + bias)`` in bf16 (in place of ``h``), so the
    backward is one multiply per element; the gradient then carries a second bf16 rounding (of the
    derivative), at most one more bf16 ulp."""
    if h.device.type != "cpu" or h.dtype != torch.bfloat16 or h.dim() == 0 or h.numel() == 0:
        return None
    if bias is not None and (bias.shape != h.shape[-1:] or not bias.is_floating_point()):
        return None
    if load(FAMILY) is None:
        return None
    return bias_gelu_op(h.contiguous(), None if bias is None else bias.float(), grad_wanted(h, bias))[0]


@torch.library.custom_op("attnlab::bias_gelu_bf16", mutates_args=())
def bias_gelu_op(h: Tensor, bias: Tensor | None, with_slope: bool) -> tuple[Tensor, Tensor]:
    """``(gelu(h + bias), gelu'(h + bias) or an empty tensor without with_slope)``, both bf16 like ``h``."""
    N = h.shape[-1]
    out = torch.empty_like(h)
    slope = torch.empty_like(h) if with_slope else h.new_empty(0)
    _check(load(FAMILY).attnlab_bias_gelu_fwd(h.data_ptr(), pointer(bias), h.numel() // N, N, out.data_ptr(),
                                              slope.data_ptr() if with_slope else None, threads(h.numel() // N)))
    return out, slope


@bias_gelu_op.register_fake
def _(h, bias, with_slope):
    return torch.empty_like(h), torch.empty_like(h) if with_slope else h.new_empty(0)


@torch.library.custom_op("attnlab::bias_gelu_bf16_backward", mutates_args=())
def bias_gelu_backward_op(dout: Tensor, slope: Tensor, with_bias: bool) -> tuple[Tensor, Tensor]:
    """``(dh bf16 like slope, dbias fp32 (N,) or an empty tensor without with_bias)``."""
    N = slope.shape[-1]
    rows = slope.numel() // N
    dout = dout.to(torch.bfloat16).contiguous()
    dh = torch.empty_like(slope)
    dbias = torch.empty(N if with_bias else 0, dtype=torch.float32, device=slope.device)
    _check(load(FAMILY).attnlab_bias_gelu_bwd(slope.data_ptr(), dout.data_ptr(), rows, N, dh.data_ptr(),
                                              dbias.data_ptr() if with_bias else None, threads(rows)))
    return dh, dbias


@bias_gelu_backward_op.register_fake
def _(dout, slope, with_bias):
    return torch.empty_like(slope), slope.new_empty(slope.shape[-1] if with_bias else 0, dtype=torch.float32)


def _bias_gelu_setup(ctx, inputs, output) -> None:
    if not inputs[2]:
        raise RuntimeError("bias_gelu_bf16 ran without keeping its derivative (with_slope=False); no backward")
    ctx.save_for_backward(output[1])
    ctx.has_bias = inputs[1] is not None
    ctx.set_materialize_grads(False)  # the slope output gets no gradient: don't zero-fill one (~1.6 ms/layer)


def _bias_gelu_backward(ctx, dout: Tensor | None, _dslope):
    if dout is None:  # the activation was not used downstream
        return None, None, None
    (slope,) = ctx.saved_tensors
    dh, dbias = bias_gelu_backward_op(dout, slope, ctx.has_bias)
    return dh, dbias if ctx.has_bias else None, None


bias_gelu_op.register_autograd(_bias_gelu_backward, setup_context=_bias_gelu_setup)
