"""Linear layers for CPU: bf16 training whose backward gets the weight gradient from a transposed copy of
the output gradient (``csrc/transpose.c``), and fp32 on oneDNN.

A linear layer's weight gradient ``dW = dY^T X`` reduces over all tokens. oneDNN computes it 1.4-1.8x
faster with ``dY^T`` contiguous than from the transposed view autograd passes it (measured at the shapes
of ``benchmarks/train_step.py``), and PyTorch's own transpose-copy is slow, so :func:`linear`'s backward
makes ``dY^T`` with the native kernel first: same values (the same bf16 products summed in fp32). The
transpose costs in proportion to ``dY`` and saves in proportion to the GEMM, so it is used where the layer
narrows (``in_features > out_features``: a Transformer MLP's output projection, 1.4x on its weight
gradient, ~2% of a GPT training step); elsewhere it costs what it saves. (``(X^T dY)^T`` from a saved
``X^T`` is as fast, but its transposed result costs more in the copies into the fp32 ``.grad`` than it
saves.) It applies under bf16 autocast (or to bf16 tensors) on CPU when a weight gradient is wanted and
the native library is available.

fp32 on CPUs with AVX-512 goes to oneDNN instead of MKL (:func:`onednn_fp32`): PyTorch's ``F.linear`` and the
matmuls of its backward call MKL's sgemm for fp32, and oneDNN's fp32 GEMM (the one PyTorch's CPU compiler
uses, ``mkldnn._linear_pointwise``) is faster on such CPUs at Transformer shapes: 0.68-0.97x the time of the
forward, 0.85-0.97x of forward and backward together, whose weight gradient stays with PyTorch
(``benchmarks/linear_fp32.py``; ``benchmarks/vision.py`` shows the effect on ViT-B/16 and Swin-T). Same precision
(fp32 products and sums, another summation order), so results match ``F.linear`` to fp32 rounding. Products
under :data:`ONEDNN_MIN_MACS` multiply-adds stay with ``F.linear``, whose fixed cost is lower. Elsewhere
:func:`linear` is ``F.linear``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._C._functorch import is_functorch_wrapped_tensor as is_functorch_wrapped

from . import decode, load
from .marshal import grad_wanted, threads
from .pointwise import autocast_bf16_cpu

FAMILY = "transpose"
# below this many multiply-adds (rows x K x N) F.linear's lower fixed cost wins (measured: 65 x 128 x 384 is
# 1.14x slower in oneDNN, 65 x 128 x 512 0.83x)
ONEDNN_MIN_MACS = 1 << 22


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: ``(..., K) -> (..., N)``; see the module docstring for when the
    transposed-gradient backward is used. Without gradients, a few rows (a decoding step) go to the native
    skinny kernel (:mod:`attnlab.native.decode`) where it applies."""
    if onednn_fp32(x, weight, bias):
        if grad_wanted(x, weight, bias):
            return _OneDNNLinear.apply(x, weight, bias)
        return onednn_linear(x, weight, bias)
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


@functools.cache
def _onednn_fp32_faster() -> bool:
    """This PyTorch has oneDNN's linear op and the CPU AVX-512 (where oneDNN's fp32 GEMM was measured faster)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.backends.cpu.get_cpu_capability().startswith("AVX512"))


def onednn_fp32(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether :func:`linear` sends ``F.linear(x, weight, bias)`` to oneDNN: fp32 tensors on a CPU with AVX-512,
    no autocast, oneDNN switched on (``torch.backends.mkldnn.flags``), at least :data:`ONEDNN_MIN_MACS`
    multiply-adds, more rows than the decoding kernel takes without gradients (:data:`decode.MAX_ROWS`), and
    :func:`plain_eager` tensors."""
    if not plain_eager(x, weight, bias):
        return False
    if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or weight.dim() != 2
            or (bias is not None and bias.dtype != torch.float32) or x.dim() < 2 or x.shape[-1] != weight.shape[1]
            or torch.is_autocast_enabled("cpu") or not torch.backends.mkldnn.enabled):
        return False
    rows = x.numel() // max(1, x.shape[-1])
    if rows * weight.shape[0] * weight.shape[1] < ONEDNN_MIN_MACS:
        return False
    return (torch.is_grad_enabled() or rows > decode.MAX_ROWS) and _onednn_fp32_faster()


def plain_eager(*tensors: Tensor | None) -> bool:
    """Eager PyTorch on plain tensors: not traced by ``torch.compile`` (which lowers ``F.linear`` to oneDNN
    itself) or ``torch.jit``, no ``torch.func`` transform and no tensor subclass (each would meet an op it
    does not handle)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    return all(t is None or (type(t) in (Tensor, nn.Parameter) and not is_functorch_wrapped(t)) for t in tensors)


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None, attr: str = "none", algorithm: str = "") -> Tensor:
    """``F.linear`` by oneDNN (``mkldnn._linear_pointwise``), with the post-op ``attr``/``algorithm`` applied to
    its output tiles (``"none"``; an activation: ``layers.mlp.ONEDNN_ACTIVATIONS``): ``(..., K) -> (..., N)``.
    No autograd: callers check that no gradient is wanted or wrap it (:class:`_OneDNNLinear`)."""
    x2 = x.reshape(-1, x.shape[-1])  # (M, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    b = None if bias is None else bias.contiguous()  # the op ignores a bias's strides
    y = torch.ops.mkldnn._linear_pointwise(x2, weight, b, attr, [], algorithm)  # (M, N)
    return y.view(*x.shape[:-1], weight.shape[0])


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` with oneDNN computing the output and the input gradient (``dY W``, the weight read
    transposed in place); the weight gradient ``dY^T X`` stays with PyTorch (oneDNN is no faster there). A
    backward that builds a graph (``create_graph=True``) uses PyTorch's matmul throughout, so it can be
    differentiated again; forward-mode AD gets the tangent from ``F.linear``."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return onednn_linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def jvp(ctx, dx: Tensor | None, dweight: Tensor | None, dbias: Tensor | None) -> Tensor:
        x, weight = ctx.saved_tensors
        parts = [F.linear(dx, weight) if dx is not None else None, F.linear(x, dweight) if dweight is not None else None,
                 dbias]
        return sum(p for p in parts if p is not None)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])  # (M, N)
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0] and torch.is_grad_enabled():  # create_graph: ops autograd can differentiate
            dx = (dy2 @ weight).view(x.shape)
        elif ctx.needs_input_grad[0]:
            dx = torch.ops.mkldnn._linear_pointwise(dy2, weight.t(), None, "none", [], "").view(x.shape)
        if ctx.needs_input_grad[1]:
            dw = dy2.t() @ x.reshape(-1, x.shape[-1])  # (N, M) @ (M, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) computed by :func:`linear` (bf16 training backward, fp32
    on oneDNN, few-row decoding)."""

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
