"""Explanations of one input from a trained model: which tokens (patches, characters) its attention says matter.

Works on any model whose attention runs through attention shells (every family: GPT, encoder, the ViT family,
UniFormer's global stages), with any kernel that can return its weights.

- ``rollout`` / ``grad_rollout`` (see :mod:`.attention`): rolled out over the trailing run of layers whose maps share
  one shape (every layer of a ViT; the last stage of a hierarchical model, said in the note).
- ``raw``: one layer's map (``layer``, default the last), one head or the heads fused.
- The relevance of token ``j`` is read from the rolled-out (or raw) matrix ``R``: the class token's row when the
  model has prefix tokens, the last position's row for a causal model (what the next-token prediction draws on),
  otherwise the mean over rows (mean pooling averages every row).

Gradient rollout needs the maps inside the forward pass: for it, each attention kernel's output is recomputed as
``A V`` from its map ``A`` (exact for kernels whose output is their map times ``V``; a kernel whose output is not is
refused, with the gap).

Keys on a coarser grid than the queries (CvT's strided key/value projections) give ``(T, S)`` maps; ``spread``
(``(S, T)``, see :func:`attnlab.viz.attention.key_placement`) places each key on the query tokens it was made from,
so such maps roll out and read like self-attention maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..attention.base import AttentionKernel
from ..attention.capabilities import CapabilityError
from ..models.transformer import collect_attention_maps, kernel_call
from ..viz.attention import attention_shells, fuse_heads, grad_rollout, rollout

MAP_METHODS = ("rollout", "grad_rollout", "raw")


@dataclass
class Relevance:
    """Per-token relevance of one input: ``values (n,)`` over the ``n`` content tokens (patches or text tokens),
    with a line saying what was rolled out."""

    values: Tensor
    note: str
    layers: list[int] = field(default_factory=list)


def model_maps(model: nn.Module, run: Callable[[], object], body: nn.Module | None = None,
               inputs: object = None) -> list[Tensor]:
    """Every attention call's ``(B, H, T, S)`` map while ``run()`` runs (the body's own ``attention_maps(inputs)``
    when it has one, e.g. CvT's convolutional projections bypass the shells).

    Raises:
        CapabilityError: no attention layers, or a kernel without weights.
    """
    if body is not None and inputs is not None and hasattr(body, "attention_maps"):
        return body.attention_maps(inputs)
    shells = attention_shells(model)
    if not shells:
        raise CapabilityError(f"{type(model).__name__} has no attention layers to explain (its token mixing is "
                              "convolutional); choose a model with attention")
    return collect_attention_maps(shells, run)


def map_shells(model: nn.Module, body: nn.Module | None = None) -> list[nn.Module]:
    """The attention shells whose maps explain ``model``: the body's ``map_shells()`` when it names them (TNT: the
    outer blocks, not the pixel-level inner ones), else every shell. Kernels run outside a shell (T2T-ViT's
    tokens-to-token layers) are not among them, so both rollouts read the same layers."""
    own = getattr(body, "map_shells", None)
    return own() if callable(own) else attention_shells(model)


def attention_kernels(model: nn.Module, shells: list[nn.Module] | None = None) -> list[nn.Module]:
    """The attention kernels ``model`` calls, in module order, without kernels nested inside another kernel (a
    composite kernel's parts are its business); with ``shells``, only the kernels inside them."""
    inside = None if shells is None else {id(m) for s in shells for m in s.modules()}
    outer: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, AttentionKernel) and not any(name.startswith(o + ".") for o, _ in outer):
            outer.append((name, m))
    return [m for _, m in outer if inside is None or id(m) in inside]


def maps_with_gradients(model: nn.Module, run: Callable[[], Tensor], name: str = "",
                        shells: list[nn.Module] | None = None) -> tuple[Tensor, list[Tensor]]:
    """``run()``'s output with every attention kernel's output recomputed as its map times ``V``, and those maps
    (which keep their gradients once the output is back-propagated), in call order. Hooks sit on the kernels, so
    attention computed outside a shell's forward (CvT's convolutional projections) is reached too; ``shells``
    (see :func:`map_shells`) limits them to the kernels inside those shells.

    Raises:
        CapabilityError: no attention layers; a kernel without weights; a kernel whose output is not its map times V
            (its gap is named).
    """
    name = name or type(model).__name__
    kernels = attention_kernels(model, shells)
    if not kernels:
        raise CapabilityError(f"a {name} has no attention layers: gradient rollout needs attention maps")
    maps: list[Tensor] = []

    def hook(module, args, kwargs, output):
        q, k, v, ctx = kernel_call(args, kwargs)
        w = module.attention_weights(q, k, v, ctx)
        w.retain_grad()
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)  # grouped K/V heads serve H // Hkv query heads
        y = (w.to(v.dtype) @ v).to(output.dtype)
        gap = (y - output).abs().max().item()
        if gap > 1e-3 * (1.0 + output.abs().max().item()):
            raise CapabilityError(f"attention {module.name!r}'s output is not its map times V (differs by "
                                  f"{gap:.3g}): gradient rollout cannot use its map; use --method rollout")
        maps.append(w)
        return y

    hooks = [k.register_forward_hook(hook, with_kwargs=True) for k in kernels]
    try:
        with torch.enable_grad():
            out = run()
    finally:
        for h in hooks:
            h.remove()
    if not maps:
        raise CapabilityError(f"a {name} never called its attention kernels, so gradient rollout has no maps; use "
                              "--method heads")
    return out, maps


def trailing_run(maps: list[Tensor], spread: Tensor | None = None) -> tuple[list[Tensor], list[int]]:
    """The last maps that share the last map's shape (one stage of a hierarchical model), and their layer indices.

    Raises:
        ValueError: no maps, or a last map that is not square (cross-attention) and no ``spread`` for its keys.
    """
    if not maps:
        raise ValueError("the model returned no attention maps")
    shape = maps[-1].shape
    if shape[-1] != shape[-2] and spread is None:
        raise ValueError(f"the last attention map is {shape[-2]}x{shape[-1]} (queries x keys of another length): "
                         "rollout needs self-attention maps; use --method raw")
    first = len(maps) - 1
    while first > 0 and maps[first - 1].shape == shape:
        first -= 1
    return maps[first:], list(range(first, len(maps)))


def read_relevance(R: Tensor, content: int, causal: bool) -> Tensor:
    """``R (..., T, T)`` -> ``(..., content)`` relevance of the last ``content`` tokens (see the module docstring)."""
    prefix = R.shape[-1] - content
    if prefix > 0:
        return R[..., 0, prefix:]
    return R[..., -1, :] if causal else R.mean(-2)


def relevance(method: str, maps: list[Tensor], content: int, causal: bool, head_fusion: str = "mean",
              discard_ratio: float = 0.0, layer: int | None = None, head: int | None = None,
              grads: list[Tensor] | None = None, spread: Tensor | None = None) -> Relevance:
    """The relevance of the first input of the batch by ``method`` (``rollout``, ``grad_rollout``, ``raw``).
    ``spread (S, T)`` places the keys of the last stage's ``(T, S)`` maps on its query tokens (see the module
    docstring); a raw map of another layer must then have that stage's shape.

    Raises:
        ValueError: unknown method, a layer or head out of range, maps of the wrong shape.
    """
    if method not in MAP_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {list(MAP_METHODS)}")
    if method == "raw":
        i = len(maps) - 1 if layer is None else layer
        if not -len(maps) <= i < len(maps):
            raise ValueError(f"layer {layer} does not exist: the model returned {len(maps)} attention maps "
                             f"(layers 0..{len(maps) - 1})")
        m = maps[i][:1].float()
        if head is not None and not 0 <= head < m.shape[1]:
            raise ValueError(f"head {head} does not exist: layer {i} has {m.shape[1]} heads")
        fused = m[:, head] if head is not None else fuse_heads(m, head_fusion)
        if spread is not None and fused.shape[-1] != fused.shape[-2]:
            if fused.shape[-1] != spread.shape[0]:
                raise ValueError(f"layer {i % len(maps)} has {fused.shape[-1]} keys on another grid than the last "
                                 "stage's; explain a layer of the last stage")
            fused = fused @ spread.to(fused)
        which = f"head {head}" if head is not None else f"heads fused by {head_fusion}"
        return Relevance(read_relevance(fused[0], min(content, fused.shape[-1]), causal),
                         f"raw attention of layer {i % len(maps)}, {which}", [i % len(maps)])
    run, layers = trailing_run(maps, spread)
    square = run[-1].shape[-1] == run[-1].shape[-2]
    spread = None if square else spread
    if method == "rollout":
        R = rollout([m[:1] for m in run], head_fusion, discard_ratio, spread)
    else:
        R = grad_rollout([m[:1] for m in run], [g[:1] for g in (grads or [])[layers[0]:]], discard_ratio, spread)
    note = f"{method} over layers {layers[0]}..{layers[-1]}" + ("" if layers[0] == 0 else
                                                              " (the last stage: earlier maps have another size)")
    if len(layers) == 1 and len(maps) > 1:
        note += "; one layer only, so this is that layer's own map"
    if spread is not None:
        note += "; strided keys spread over the pixels their convolution reads"
    return Relevance(read_relevance(R[0], min(content, R.shape[-1]), causal), note, layers)
