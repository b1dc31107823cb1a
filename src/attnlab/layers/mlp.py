"""Position-wise feed-forward layers: the Transformer MLP and SwiGLU (Shazeer 2020, "GLU Variants")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

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
    """``fc_out(act(fc_in(x)))``: ``(..., D) -> (..., mlp_dim) -> (..., D)``."""

    def __init__(self, dim: int, mlp_dim: int, activation: str = "gelu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.fc_in = nn.Linear(dim, mlp_dim, bias=bias)
        self.fc_out = nn.Linear(mlp_dim, dim, bias=bias)
        self.act = get_activation(activation)
        self.activation = activation
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc_out(self.act(self.fc_in(x))))


class SwiGLU(nn.Module):
    """``fc_out(silu(gate(x)) * up(x))`` (Shazeer 2020); ``(..., D) -> (..., D)``."""

    def __init__(self, dim: int, mlp_dim: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.gate = nn.Linear(dim, mlp_dim, bias=bias)
        self.up = nn.Linear(dim, mlp_dim, bias=bias)
        self.fc_out = nn.Linear(mlp_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc_out(F.silu(self.gate(x)) * self.up(x)))


def build_mlp(kind: str, dim: int, mlp_dim: int, activation: str = "gelu", bias: bool = True,
              dropout: float = 0.0) -> nn.Module:
    """``kind``: ``"mlp"`` (with ``activation``) or ``"swiglu"``."""
    if kind == "mlp":
        return MLP(dim, mlp_dim, activation, bias, dropout)
    if kind == "swiglu":
        return SwiGLU(dim, mlp_dim, bias, dropout)
    raise ValueError(f"unknown mlp {kind!r}; valid: ['mlp', 'swiglu']")
