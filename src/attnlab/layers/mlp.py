"""Position-wise feed-forward layers: the Transformer MLP and SwiGLU (Shazeer 2020, "GLU Variants")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..native.linear import Linear, linear
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
    equals PyTorch's to bf16 rounding. Inference keeps PyTorch's ``addmm`` + GELU (as fast, nothing saved).
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
        return self.dropout(self.fc_out(self.act(self.fc_in(x))))


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
