"""What attention does, from the maps a model returns (``model.attention_maps(...)``: one ``(B, H, T, T)`` tensor per
layer, any kernel that has weights): attention rollout, gradient-weighted rollout and mean attention distance.

- Rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"): per layer, fuse the heads (mean, max
  or min), optionally zero the weakest ``discard_ratio`` of the entries (never a row's attention to token 0, the
  class token when there is one; Gildenblat's vit-explain spares only token 0's own row), add the identity for the
  residual stream,
  renormalise the rows, and multiply the layers from the first: ``R = A_L ... A_1``.
- Gradient rollout (Chefer et al. 2021's idea in vit-explain's form): the heads are fused as ``mean_h(relu(A * dA))``
  with ``dA`` the gradient of a class score with respect to the map, then rolled out the same way.
- Head importance (Michel et al. 2019, "Are Sixteen Heads Really Better than One?", by ablation): the change of a
  loss when one head's output is zeroed before the output projection, one head at a time.
- Mean attention distance (Dosovitskiy et al. 2021, Figure 7): per layer and head, the distance in pixels between a
  query patch and the patches it attends to, weighted by attention and averaged over queries; prefix tokens are
  left out and each row renormalised over the patches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

FUSIONS = ("mean", "max", "min")


def _check_maps(maps: list[Tensor]) -> None:
    if not maps:
        raise ValueError("no attention maps: pass model.attention_maps(...) (one (B, H, T, T) tensor per layer)")
    shapes = {tuple(m.shape) for m in maps}
    if len(shapes) != 1 or any(len(s) != 4 or s[2] != s[3] for s in shapes):
        raise ValueError(f"attention maps must all be (B, H, T, T) of one shape (self-attention over the same tokens), "
                         f"got {sorted(shapes)}; hierarchical models change T between stages: roll out one stage")


def fuse_heads(maps: Tensor, head_fusion: str = "mean") -> Tensor:
    """``(B, H, T, T)`` -> ``(B, T, T)`` by the mean, max or min over heads.

    Raises:
        ValueError: an unknown ``head_fusion``.
    """
    if head_fusion not in FUSIONS:
        raise ValueError(f"head_fusion must be one of {FUSIONS}, got {head_fusion!r}")
    return maps.mean(1) if head_fusion == "mean" else getattr(maps, head_fusion)(dim=1).values


def discard_weakest(fused: Tensor, ratio: float) -> Tensor:
    """Zero the lowest ``ratio`` of each map's ``T * T`` entries, keeping every row's entry for token 0.

    Raises:
        ValueError: ``ratio`` outside [0, 1).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {ratio}")
    B, T, _ = fused.shape
    n = int(T * T * ratio)
    if n == 0:
        return fused
    flat = fused.reshape(B, T * T).clone()
    weakest = flat.topk(n, dim=-1, largest=False).indices  # (B, n)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[:, torch.arange(T) * T] = True  # column 0 of every row
    flat.scatter_(1, weakest, 0.0)
    return torch.where(keep, fused.reshape(B, T * T), flat).view(B, T, T)


def _roll(fused_layers: list[Tensor]) -> Tensor:
    T = fused_layers[0].shape[-1]
    eye = torch.eye(T, dtype=fused_layers[0].dtype, device=fused_layers[0].device)
    result = eye.expand_as(fused_layers[0]).clone()
    for a in fused_layers:
        a = (a + eye) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    return result


def rollout(maps: list[Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> Tensor:
    """Attention rollout of per-layer maps ``[(B, H, T, T)] * L`` -> ``(B, T, T)``: row ``i`` is how much token ``i``
    of the last layer draws on each input token (row 0 of a class-token model explains its prediction).

    Raises:
        ValueError: no maps, maps of different shapes, an unknown fusion, a ratio outside [0, 1).
    """
    _check_maps(maps)
    return _roll([discard_weakest(fuse_heads(m.float(), head_fusion), discard_ratio) for m in maps])


def grad_rollout(maps: list[Tensor], grads: list[Tensor], discard_ratio: float = 0.0) -> Tensor:
    """Gradient-weighted rollout: heads fused as ``mean_h(relu(A * dA))`` (``grads`` the maps' gradients of the
    explained score, same shapes) -> ``(B, T, T)``.

    Raises:
        ValueError: no maps, maps and gradients of different shapes or counts.
    """
    _check_maps(maps)
    if len(grads) != len(maps) or any(g.shape != m.shape for g, m in zip(grads, maps)):
        raise ValueError("grads must hold one gradient per map, of the map's shape")
    fused = [(m.float() * g.float()).clamp(min=0).mean(1) for m, g in zip(maps, grads)]
    return _roll([discard_weakest(f, discard_ratio) for f in fused])


def mean_attention_distance(maps: list[Tensor], grid: tuple[int, int], patch_size: int = 1) -> Tensor:
    """``(layers, heads)`` mean attention distance in pixels (patch centres ``patch_size`` apart) over the last
    ``rows * cols`` tokens of each map (the grid; tokens before it are prefix tokens, left out), averaged over queries
    and the batch.

    Raises:
        ValueError: no maps, or maps with fewer tokens than the grid.
    """
    _check_maps(maps)
    rows, cols = grid
    n = rows * cols
    if maps[0].shape[-1] < n:
        raise ValueError(f"maps of {maps[0].shape[-1]} tokens cannot hold a {rows}x{cols} grid")
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    pos = torch.stack([y.flatten(), x.flatten()], dim=1).float() * patch_size  # (n, 2)
    dist = torch.cdist(pos, pos)  # (n, n) Euclidean distances between patch centres
    out = []
    for m in maps:
        w = m[..., -n:, -n:].float()
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)  # over the patches only
        out.append((w * dist.to(w.device)).sum(-1).mean(dim=(0, 2)))  # (H,)
    return torch.stack(out)


def attention_shells(model: nn.Module) -> list[nn.Module]:
    """The attention shells of ``model`` in module order: modules with ``out_proj``, ``num_heads`` and ``head_dim``."""
    return [m for m in model.modules() if all(hasattr(m, a) for a in ("out_proj", "num_heads", "head_dim"))]


def head_importance(model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> list[Tensor]:
    """Per attention layer a ``(heads,)`` tensor: ``|loss with head h zeroed - loss|``, ``loss_fn(model)`` a scalar
    (e.g. the objective on a fixed batch), computed without gradients in the model's current mode (use eval).

    Raises:
        ValueError: a model without attention shells.
    """
    shells = attention_shells(model)
    if not shells:
        raise ValueError(f"{type(model).__name__} has no attention layers (modules with out_proj and num_heads)")
    with torch.no_grad():
        base = float(loss_fn(model))
        scores = []
        for shell in shells:
            row = []
            for h in range(shell.num_heads):
                cut = slice(h * shell.head_dim, (h + 1) * shell.head_dim)

                def zero_head(module, args, cut=cut):
                    x = args[0].clone()
                    x[..., cut] = 0  # the head's slice of the merged heads, before the output projection
                    return (x,) + tuple(args[1:])

                hook = shell.out_proj.register_forward_pre_hook(zero_head)
                try:
                    row.append(abs(float(loss_fn(model)) - base))
                finally:
                    hook.remove()
            scores.append(torch.tensor(row))
    return scores
