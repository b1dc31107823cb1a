"""Linear layers for bf16 training on CPU whose backward gets the weight gradient from a transposed
copy of the output gradient (``csrc/transpose.c``).

A linear layer's weight gradient ``dW = dY^T X`` reduces over all tokens. oneDNN computes it 1.4-1.8x
faster with ``dY^T`` contiguous than from the transposed view autograd passes it (measured at the shapes
of ``benchmarks/train_step.py``), and PyTorch's own transpose-copy is slow, so :func:`linear`'s backward
makes ``dY^T`` with the native kernel first: same values (the same bf16 products summed in fp32). The
transpose costs in proportion to ``dY`` and saves in proportion to the GEMM, so it is used where the layer
narrows (``in_features > out_features``: a Transformer MLP's output projection, 1.4x on its weight
gradient, ~2% of a GPT training step); elsewhere it costs what it saves. (``(X^T dY)^T`` from a saved
``X^T`` is as fast, but its transposed result costs more in the copies into the fp32 ``.grad`` than it
saves.) It applies under bf16 autocast (or to bf16 tensors) on CPU when a weight gradient is wanted and
the native library is available; otherwise :func:`linear` is ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import decode, load
from .marshal import grad_wanted, threads
from .pointwise import autocast_bf16_cpu

FAMILY = "transpose"


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: ``(..., K) -> (..., N)``; see the module docstring for when the
    transposed-gradient backward is used. Without gradients, a few rows (a decoding step) go to the native
    skinny kernel (:mod:`attnlab.native.decode`) where it applies."""
    if not torch.is_grad_enabled():  # no weight gradient to speed up; decode.linear falls back to F.linear
        return decode.linear(x, weight, bias)
    if (x.device.type == "cpu" and x.dim() >= 2 and x.numel() > 0 and grad_wanted(weight)
            and weight.shape[1] > weight.shape[0] and load(FAMILY) is not None):
        if autocast_bf16_cpu() and weight.dtype == torch.float32 and x.dtype in (torch.float32, torch.bfloat16):
            with torch.autocast("cpu", enabled=False):  # the casts autocast would make, recorded by autograd
                return _TransposedGradLinear.apply(x.to(torch.bfloat16), weight.to(torch.bfloat16),
                                                    None if bias is None else bias.to(torch.bfloat16))
        if x.dtype == weight.dtype == torch.bfloat16 and (bias is None or bias.dtype == torch.bfloat16):
            return _TransposedGradLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose bf16 CPU training backward uses :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


@torch.library.custom_op("attnlab::transpose_bf16", mutates_args=())
def transpose_bf16(x: Tensor) -> Tensor:
    """``x (M, K)`` bf16 (unit stride along K) -> contiguous ``(K, M)``."""
    M, K = x.shape
    out = x.new_empty(K, M)
    load(FAMILY).attnlab_transpose_bf16(x.data_ptr(), M, K, x.stride(0), out.data_ptr(), M,
                                        threads((M + 31) // 32))  # threads split 32-row blocks
    return out


@transpose_bf16.register_fake
def _(x):
    return x.new_empty(x.shape[1], x.shape[0])


class _TransposedGradLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # (M, K)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        y = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())  # (M, N)
        ctx.save_for_backward(x2, weight)
        ctx.has_bias, ctx.x_shape = bias is not None, x.shape
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: Tensor):
        x2, weight = ctx.saved_tensors  # x2 (M, K)
        dy2 = dy.reshape(-1, dy.shape[-1])  # (M, N)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dx = (dy2 @ weight).view(ctx.x_shape) if ctx.needs_input_grad[0] else None
        dw = transpose_bf16(dy2) @ x2 if ctx.needs_input_grad[1] else None  # (N, M) @ (M, K), contiguous
        db = dy2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db
