"""Position-wise feed-forward layers: the Transformer MLP and SwiGLU (Shazeer 2020, "GLU Variants")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..native.decode import MAX_ROWS
from ..native.linear import Linear, linear, onednn_linear, plain_eager
from ..native.mlp_fp32 import mlp_fp32
from ..native.pointwise import autocast_bf16_cpu, bias_gelu_bf16

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": F.relu,
    "silu": F.silu,
}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """``fc_out(act(fc_in(x)))``: ``(..., D) -> (..., mlp_dim) -> (..., D)``.

    Training in bf16 on CPU (bf16 autocast or bf16 weights) with the exact GELU, ``gelu(fc_in(x))`` is a
    bias-free matmul followed by attnlab's native bias + GELU kernel, which keeps the GELU's derivative for
    a one-multiply backward that also gives the bias gradient (:mod:`attnlab.native.pointwise`); the result
    equals PyTorch's to bf16 rounding. fp32 training with a GELU on a CPU with AVX-512 runs the whole MLP as
    one autograd function whose backward reuses its hidden-gradient buffer (:mod:`attnlab.native.mlp_fp32`;
    plain, unhooked linear layers only). Inference on CPU runs ``act(fc_in(x))`` as one oneDNN matmul with the
    activation applied to its output tiles (:func:`fused_linear_activation`; a plain, unhooked ``fc_in`` only):
    the same values in fp32 (to summation order), one pass less over the hidden activation, which is what costs
    where that activation is large (Swin-T's first stage).
    """

    def __init__(self, dim: int, mlp_dim: int, activation: str = "gelu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.fc_in = Linear(dim, mlp_dim, bias=bias)
        self.fc_out = Linear(mlp_dim, dim, bias=bias)
        self.act = get_activation(activation)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if (self.activation == "gelu" and x.device.type == "cpu" and torch.is_grad_enabled()
                and self.fc_in.weight.requires_grad and (x.dtype == torch.bfloat16 or autocast_bf16_cpu())):
            h = linear(x, self.fc_in.weight)  # (..., mlp_dim), bf16
            a = bias_gelu_bf16(h, self.fc_in.bias)
            if a is None:  # the native kernel is unavailable
                a = self.act(h if self.fc_in.bias is None else h + self.fc_in.bias.to(h.dtype))
            return self.dropout(self.fc_out(a))
        fc_in, fc_out, h = self.fc_in, self.fc_out, None
        if _plain(fc_in) and _plain(fc_out) and torch.is_grad_enabled():
            y = mlp_fp32(x, fc_in.weight, fc_in.bias, fc_out.weight, fc_out.bias, self.activation)
            if y is not None:
                return self.dropout(y)
        if _plain(fc_in):
            h = fused_linear_activation(x, fc_in.weight, fc_in.bias, self.activation)
        return self.dropout(fc_out(self.act(fc_in(x)) if h is None else h))


def _plain(layer: nn.Module) -> bool:
    """A plain linear layer: a wrapped, parametrized or hooked one keeps its own forward."""
    return type(layer) in (nn.Linear, Linear) and not (layer._forward_hooks or layer._forward_pre_hooks)


# activation name (None: none) -> (oneDNN post-op, its algorithm)
ONEDNN_ACTIVATIONS = {None: ("none", ""), "gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh"), "relu": ("relu", "")}
FUSED_MIN_ROWS = MAX_ROWS + 1  # up to MAX_ROWS rows (decoding) go to the native skinny kernel instead


def fusion_available(device: torch.device) -> bool:
    """oneDNN's fused linear (``mkldnn._linear_pointwise``) exists in this PyTorch build, is switched on
    (``torch.backends.mkldnn.flags``), and ``device`` is the CPU."""
    return (device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def fused_linear_activation(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> Tensor | None:
    """``act(F.linear(x, weight, bias))`` as one oneDNN call (PyTorch's ``mkldnn._linear_pointwise``, the op its
    CPU compiler fuses into), or None where it does not apply: gradients enabled (the op has no backward), not
    CPU, tensors that are not plain eager ones (``attnlab.native.linear.plain_eager``: compiled, traced,
    ``torch.func``, subclasses), fewer than :data:`FUSED_MIN_ROWS` rows, an activation oneDNN lacks, mixed
    dtypes outside bf16 autocast, bf16 on a CPU without native bf16 support, or no oneDNN fusion
    (:func:`fusion_available`). Under bf16 autocast the operands are cast to bf16 as autocast would.

    Shapes: ``x (..., K)``, ``weight (N, K)``, ``bias (N,)`` -> ``(..., N)``.
    """
    if (torch.is_grad_enabled() or activation is None or activation not in ONEDNN_ACTIVATIONS
            or x.numel() < FUSED_MIN_ROWS * x.shape[-1] or not fusion_available(x.device)
            or not plain_eager(x, weight, bias)):
        return None
    floats = (torch.float32, torch.bfloat16)
    if autocast_bf16_cpu() and x.dtype in floats and weight.dtype in floats:
        dtype = torch.bfloat16
    elif x.dtype == weight.dtype and x.dtype in floats and (bias is None or bias.dtype == x.dtype):
        dtype = x.dtype
    else:
        return None
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None  # oneDNN would run bf16 on a slow reference path
    attr, algorithm = ONEDNN_ACTIVATIONS[activation]
    return onednn_linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype), attr, algorithm)


class SwiGLU(nn.Module):
    """``fc_out(act(gate(x)) * up(x))`` (Shazeer 2020, "GLU Variants Improve Transformer"): SwiGLU with ``silu``,
    GEGLU with ``gelu_tanh`` (T5 v1.1's gated-gelu); ``(..., D) -> (..., D)``."""

    def __init__(self, dim: int, mlp_dim: int, bias: bool = False, dropout: float = 0.0, activation: str = "silu"):
        super().__init__()
        self.gate = nn.Linear(dim, mlp_dim, bias=bias)
        self.up = nn.Linear(dim, mlp_dim, bias=bias)
        self.fc_out = nn.Linear(mlp_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.act = get_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc_out(self.act(self.gate(x)) * self.up(x)))


def build_mlp(kind: str, dim: int, mlp_dim: int, activation: str = "gelu", bias: bool = True,
              dropout: float = 0.0) -> nn.Module:
    """``kind``: ``"mlp"`` (with ``activation``), ``"swiglu"`` or ``"geglu"`` (gated, tanh-GELU gate)."""
    if kind == "mlp":
        return MLP(dim, mlp_dim, activation, bias, dropout)
    if kind in ("swiglu", "geglu"):
        return SwiGLU(dim, mlp_dim, bias, dropout, "silu" if kind == "swiglu" else "gelu_tanh")
    raise ValueError(f"unknown mlp {kind!r}; valid: ['geglu', 'mlp', 'swiglu']")
