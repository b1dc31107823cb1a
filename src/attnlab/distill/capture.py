"""What distillation reads from a model: the input of one layer's attention shell, and what its projections and
kernel make of it.

A forward pre-hook on ``blocks[layer].attn`` records the shell's input and stops the forward there when nothing
after that layer is needed (the relations of MiniLM use only the layer's projections, so neither model runs the rest
of its stack). Batches run packed without padding (one row per batch, ``document_ids``; ByteTransformer, Zhai et al.
2023) when every kernel of the model can; the recorded input is then unpacked to ``(B, T, dim)`` with zeros at pads,
so the losses see per-sentence maps either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..attention.base import AttentionKernel
from ..attention.context import AttentionContext
from ..attention.reference import expand_kv_heads
from ..attention.registry import list_attention, get_attention_class
from ..infer.embed import supports_packing
from ..infer.packing import pack_padded, segment_mean, unpack
from ..models.pooling import pool


class _Stop(Exception):
    """Raised by the hook to end a forward once the layer's input is recorded."""


@dataclass
class Captured:
    """``x (B, T, dim)``: the layer's attention input (zeros at pads); ``mask (B, T)`` bool, True at real tokens;
    ``shell``: that layer's attention shell; ``embedding (B, dim)``: the mean-pooled, L2-normalised output (only when
    asked for)."""

    x: Tensor
    mask: Tensor
    shell: nn.Module
    embedding: Tensor | None = None

    def projections(self) -> tuple[Tensor, Tensor, Tensor]:
        """The concatenated projections ``q (B, T, H Dh)``, ``k, v (B, T, Hkv Dh)`` before the head split (and before
        RoPE): MiniLM v2's relation inputs."""
        s = self.shell
        return s.q_proj(self.x), s.k_proj(self.x), s.v_proj(self.x)

    def heads(self) -> tuple[Tensor, Tensor, Tensor]:
        """``q (B, H, T, Dh)``, ``k, v (B, Hkv, T, Dh)`` as the kernel receives them (RoPE applied)."""
        ctx = self.context()
        return self.shell.project(self.x, None, ctx)

    def context(self) -> AttentionContext:
        return AttentionContext(key_padding_mask=self.mask)

    def attention_scores(self) -> tuple[Tensor, Tensor]:
        """``(scores (B, H, T, T) float32, keep (B|1, 1, T, T) bool)``: the pre-softmax scores of this layer's kernel
        (``q k^T * scale`` plus its bias) and the keys each query may see (padding and the kernel's pattern).

        Raises:
            ValueError: the kernel's attention is not a softmax of scores (linear attention, routing, ...): names the
                kernels that are, and the v2 relations, which need only the projections.
        """
        kernel = self.shell.kernel
        require_softmax_map(kernel)
        q, k, _ = self.heads()
        ctx = self.context()
        T = q.shape[2]
        scores = torch.matmul(q.float(), expand_kv_heads(k, q.shape[1]).float().transpose(-1, -2))
        scores = scores * kernel.softmax_scale(q.shape[-1])
        bias = kernel.full_bias(T, T, ctx, q.device)
        if bias is not None:
            scores = scores + bias.float()
        keep = kernel.full_mask(T, T, ctx, q.device)
        return scores, keep


def softmax_map_kernels() -> list[str]:
    """Registered kernels whose attention is a softmax of ``q k^T`` scores under a mask (what v1's attention loss
    can distill)."""
    return [n for n in list_attention() if get_attention_class(n).attention_map is AttentionKernel.attention_map]


def require_softmax_map(kernel: nn.Module) -> None:
    """Raises ``ValueError`` (naming the kernels that can, and the v2 relations) when ``kernel`` has no softmax
    attention distribution."""
    if type(kernel).attention_map is not AttentionKernel.attention_map:
        raise ValueError(f"the attention loss (MiniLM v1) distills softmax attention distributions, and the "
                         f"{kernel.name!r} kernel has none; use the v2 relations (objective.losses={{qq: 1, kk: 1, "
                         f"vv: 1}}), which work for every kernel, or a student kernel among "
                         f"{softmax_map_kernels()}")


def capture(model: nn.Module, ids: Tensor, mask: Tensor, layer: int, embedding: bool = False) -> Captured:
    """Run ``model`` (an encoder) on ``ids (B, T)`` with ``mask (B, T)`` and record ``blocks[layer]``'s attention input.

    With ``embedding`` the whole stack runs and the mean-pooled, L2-normalised output is kept too; otherwise the
    forward stops at that layer. Gradients flow as the caller's mode allows.

    Raises:
        ValueError: ``layer`` outside the model's blocks.
    """
    blocks = model.blocks
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"layer {layer} is outside the model's {len(blocks)} layers")
    shell = blocks[layer].attn
    store: dict[str, Tensor] = {}

    def hook(module, args, kwargs):
        store["x"] = args[0] if args else kwargs["x"]
        if not embedding:
            raise _Stop

    handle = shell.register_forward_pre_hook(hook, with_kwargs=True)
    B, T = ids.shape
    packed = supports_packing(model)
    out = None
    try:
        if packed:
            p, word_idx = pack_padded(ids, mask)
            out = model(p.ids, document_ids=p.document_ids, positions=p.positions)
        else:
            out = model(ids, mask)
    except _Stop:
        pass
    finally:
        handle.remove()
    x = store["x"]
    if packed:
        x = unpack(x[:1], word_idx, B, T)
    else:
        x = x[:B] * mask[..., None].to(x.dtype)  # rows a stack hook appended are not the batch's
    emb = None
    if embedding:
        pooled = segment_mean(out[:1].float(), p) if packed else pool(out[:B].float(), mask, "mean")
        emb = torch.nn.functional.normalize(pooled, dim=-1)
    return Captured(x=x, mask=mask, shell=shell, embedding=emb)
