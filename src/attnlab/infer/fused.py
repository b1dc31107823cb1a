"""Inference-only fused linears for CPU: bias and activation run in the GEMM epilogue (oneDNN).

``nn.Linear`` followed by GELU passes over the ``(N, mlp_dim)`` activation three times (bias
broadcast, GEMM, GELU); oneDNN's ``linear_pointwise`` does it once. Applied to the bf16 copy that
:func:`attnlab.embed` runs, where it measured ~20% faster end to end; the user's model is never modified.
(Without gradients every :class:`~attnlab.layers.mlp.MLP` on CPU also fuses its first matmul and activation by
itself, :func:`~attnlab.layers.mlp.fused_linear_activation`; this module adds the output projections and
``fc_out``.)
"""

from __future__ import annotations

from torch import Tensor, nn

from ..layers.mlp import MLP, ONEDNN_ACTIVATIONS, fusion_available
from ..native.linear import Linear, onednn_linear


class FusedLinear(nn.Module):
    """``act(x @ W^T + b)`` in one oneDNN call, sharing the linear's parameters. ``(..., in) -> (..., out)``.

    Raises:
        ValueError: an activation oneDNN cannot fuse.
    """

    def __init__(self, linear: nn.Linear, activation: str | None = None):
        super().__init__()
        if activation not in ONEDNN_ACTIVATIONS:
            raise ValueError(f"no fused form of activation {activation!r}; fusable: {[a for a in ONEDNN_ACTIVATIONS if a]}")
        self.weight, self.bias = linear.weight, linear.bias
        self.attr, self.algorithm = ONEDNN_ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return onednn_linear(x, self.weight, self.bias, self.attr, self.algorithm)  # (..., out)


class FusedMLP(nn.Module):
    """:class:`~attnlab.layers.mlp.MLP` with its activation fused into ``fc_in`` (eval only: no dropout)."""

    def __init__(self, mlp: MLP):
        super().__init__()
        self.fc_in = FusedLinear(mlp.fc_in, mlp.activation)
        self.fc_out = FusedLinear(mlp.fc_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(self.fc_in(x))


def fuse_linears(model: nn.Module) -> int:
    """Swap each block's MLP and attention output projection for fused versions, in place; returns how
    many modules were swapped (0 when this PyTorch build or device has no oneDNN fusion)."""
    if not fusion_available(next(model.parameters()).device):
        return 0
    swapped = 0
    for block in model.blocks:
        if type(block.mlp) is MLP and block.mlp.activation in ONEDNN_ACTIVATIONS and block.mlp.fc_in.bias is not None:
            block.mlp = FusedMLP(block.mlp)
            swapped += 1
        if type(block.attn.out_proj) in (nn.Linear, Linear) and block.attn.out_proj.bias is not None:
            block.attn.out_proj = FusedLinear(block.attn.out_proj)
            swapped += 1
    return swapped
