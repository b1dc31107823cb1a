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


def _check_maps(maps: list[Tensor], spread: Tensor | None = None) -> None:
    if not maps:
        raise ValueError("no attention maps: pass model.attention_maps(...) (one (B, H, T, T) tensor per layer)")
    shapes = {tuple(m.shape) for m in maps}
    keys = None if spread is None else spread.shape  # (S, T): maps are (B, H, T, S)
    if len(shapes) != 1 or any(len(s) != 4 or (s[2] != s[3] if keys is None else (s[3], s[2]) != tuple(keys))
                               for s in shapes):
        want = "(B, H, T, T)" if keys is None else f"(B, H, {keys[1]}, {keys[0]})"
        raise ValueError(f"attention maps must all be {want} of one shape (self-attention over the same tokens), "
                         f"got {sorted(shapes)}; hierarchical models change T between stages: roll out one stage")


def key_placement(grid: tuple[int, int], kernel: int, stride: int, padding: int, prefix: int = 0,
                  how: str = "spread", device=None) -> Tensor:
    """``(S, T)``: where each key of a strided convolutional key grid sits on the query grid (CvT's keys: a
    ``kernel x kernel`` convolution of stride ``stride`` and zero padding ``padding`` over the ``rows x cols`` query
    grid). ``how="spread"`` shares each key's weight evenly over the grid tokens its window reads (rows sum to 1, so
    ``map @ placement`` is again a row-stochastic ``(T, T)`` map); ``how="centre"`` puts it on its window's centre
    (exact positions, for attention distances). The ``prefix`` tokens (class token) come first in both and map to
    themselves. ``T = prefix + rows * cols``, ``S = prefix + rows' * cols'``.

    Raises:
        ValueError: an unknown ``how``, or a convolution that leaves no keys.
    """
    if how not in ("spread", "centre"):
        raise ValueError(f"how must be 'spread' or 'centre', got {how!r}")
    rows, cols = grid
    kr, kc = ((n + 2 * padding - kernel) // stride + 1 for n in grid)
    if kr < 1 or kc < 1:
        raise ValueError(f"a {kernel}x{kernel} convolution of stride {stride} leaves no keys on a {rows}x{cols} grid")

    def axis(n_in: int, n_out: int) -> Tensor:  # (n_out, n_in) placement along one axis
        start = torch.arange(n_out) * stride - padding
        if how == "centre":
            return nn.functional.one_hot(start + (kernel - 1) // 2, n_in).float()
        idx = torch.arange(n_in)
        return ((idx >= start[:, None]) & (idx < start[:, None] + kernel)).float()

    grid_part = torch.kron(axis(rows, kr), axis(cols, kc))  # (kr * kc, rows * cols), row-major on both sides
    grid_part = grid_part / grid_part.sum(-1, keepdim=True)
    out = torch.zeros(prefix + kr * kc, prefix + rows * cols, device=device)
    out[:prefix, :prefix] = torch.eye(prefix)
    out[prefix:, prefix:] = grid_part.to(device)
    return out


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


def rollout(maps: list[Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0,
            spread: Tensor | None = None) -> Tensor:
    """Attention rollout of per-layer maps ``[(B, H, T, T)] * L`` -> ``(B, T, T)``: row ``i`` is how much token ``i``
    of the last layer draws on each input token (row 0 of a class-token model explains its prediction). Maps whose
    keys are ``S`` tokens of a coarser grid, ``(B, H, T, S)``, take ``spread (S, T)`` (:func:`key_placement`): each
    fused map is placed on the query tokens as ``fused @ spread`` before the discard.

    Raises:
        ValueError: no maps, maps of different shapes (or not matching ``spread``), an unknown fusion, a ratio
            outside [0, 1).
    """
    _check_maps(maps, spread)
    return _roll([discard_weakest(_place(fuse_heads(m.float(), head_fusion), spread), discard_ratio) for m in maps])


def grad_rollout(maps: list[Tensor], grads: list[Tensor], discard_ratio: float = 0.0,
                 spread: Tensor | None = None) -> Tensor:
    """Gradient-weighted rollout: heads fused as ``mean_h(relu(A * dA))`` (``grads`` the maps' gradients of the
    explained score, same shapes), placed by ``spread`` as in :func:`rollout` -> ``(B, T, T)``.

    Raises:
        ValueError: no maps, maps and gradients of different shapes or counts.
    """
    _check_maps(maps, spread)
    if len(grads) != len(maps) or any(g.shape != m.shape for g, m in zip(grads, maps)):
        raise ValueError("grads must hold one gradient per map, of the map's shape")
    fused = [_place((m.float() * g.float()).clamp(min=0).mean(1), spread) for m, g in zip(maps, grads)]
    return _roll([discard_weakest(f, discard_ratio) for f in fused])


def _place(fused: Tensor, spread: Tensor | None) -> Tensor:
    return fused if spread is None else fused @ spread.to(fused)


def mean_attention_distance(maps: list[Tensor], grid: tuple[int, int], patch_size: float = 1,
                            placement: Tensor | None = None) -> Tensor:
    """``(layers, heads)`` mean attention distance in pixels (patch centres ``patch_size`` apart) over the last
    ``rows * cols`` tokens of each map (the grid; tokens before it are prefix tokens, left out), averaged over queries
    and the batch. Maps with keys on a coarser grid, ``(B, H, T, S)``, take their keys' ``placement (S, T)``
    (:func:`key_placement` with ``how="centre"``: each key at its window's centre).

    Raises:
        ValueError: no maps, or maps with fewer tokens than the grid.
    """
    _check_maps(maps, placement)
    if placement is not None:
        maps = [m.float() @ placement.to(m.device) for m in maps]
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
