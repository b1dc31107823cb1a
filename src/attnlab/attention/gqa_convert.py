"""MHA -> GQA "uptraining" conversion by mean-pooling K/V projections.

Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
Checkpoints"; the pooling follows ``att_weight_conversion`` of the KDGQA reference code
(``zohaib-khan5040/key-driven-gqa``): each new K (and V) head is the mean of the ``r`` original head
blocks of its contiguous group, weights and biases alike; ``W_Q`` and ``W_O`` are copied unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .shell import MultiHeadAttention


def mean_pool_heads(w: Tensor, heads: int, new_heads: int, head_dim: int) -> Tensor:
    """``(heads*Dh, ...)`` projection rows -> ``(new_heads*Dh, ...)``: mean over contiguous head groups."""
    if heads % new_heads:
        raise ValueError(f"cannot pool {heads} K/V heads into {new_heads}: {new_heads} must divide {heads}")
    rest = w.shape[1:]
    grouped = w.reshape(new_heads, heads // new_heads, head_dim, *rest)  # (G, r, Dh, ...)
    return grouped.mean(dim=1).reshape(new_heads * head_dim, *rest)


def convert_shell(attn: MultiHeadAttention, num_kv_heads: int, kernel=None, kernel_options: dict | None = None,
                  max_seq_len: int | None = None) -> MultiHeadAttention:
    """A new shell with ``num_kv_heads`` K/V heads and mean-pooled K/V projections.

    ``kernel`` (name) and ``kernel_options`` rebuild the kernel; ``None`` reuses the old kernel object
    (fine for kernels without per-K/V-head state). Kernel state whose shapes still fit is copied.
    """
    if attn.num_kv_heads % num_kv_heads:
        raise ValueError(
            f"num_kv_heads={num_kv_heads} must divide the current {attn.num_kv_heads} K/V heads; valid: "
            f"{[g for g in range(1, attn.num_kv_heads + 1) if attn.num_kv_heads % g == 0]}"
        )
    bias = attn.q_proj.bias is not None
    new = MultiHeadAttention(
        attn.dim, attn.num_heads, num_kv_heads, kernel=kernel if kernel is not None else attn.kernel,
        kernel_options=kernel_options if kernel is not None else None, head_dim=attn.head_dim, rope=attn.rope,
        bias=bias, dropout=attn.dropout.p, max_seq_len=max_seq_len,
    ).to(device=attn.q_proj.weight.device, dtype=attn.q_proj.weight.dtype)
    with torch.no_grad():
        for name in ("q_proj", "out_proj"):
            getattr(new, name).load_state_dict(getattr(attn, name).state_dict())
        for name in ("k_proj", "v_proj"):
            old, dst = getattr(attn, name), getattr(new, name)
            dst.weight.copy_(mean_pool_heads(old.weight, attn.num_kv_heads, num_kv_heads, attn.head_dim))
            if bias:
                dst.bias.copy_(mean_pool_heads(old.bias, attn.num_kv_heads, num_kv_heads, attn.head_dim))
        if kernel is not None:
            own = new.kernel.state_dict()
            fits = {k: v for k, v in attn.kernel.state_dict().items() if k in own and own[k].shape == v.shape}
            new.kernel.load_state_dict(fits, strict=False)
    new.train(attn.training)
    return new


def convert_to_gqa(model: nn.Module, num_kv_heads: int) -> nn.Module:
    """Convert every attention layer of ``model`` to ``num_kv_heads`` K/V heads, in place; returns ``model``.

    Each :class:`MultiHeadAttention` is rebuilt with fewer K/V heads (mean-pooled K/V projections,
    Q/O copied). Models built from a :class:`~attnlab.models.config.ModelConfig` (``model.cfg``) get
    their kernels rebuilt from the config (so per-K/V-head kernels such as ``dgqa`` resize) and
    ``model.cfg.num_kv_heads`` updated; other modules keep their kernel objects. The GQA recipe then
    continues pre-training for a small fraction of the original steps (about 5%).

    Raises:
        ValueError: ``num_kv_heads`` does not divide a layer's current K/V head count.
    """
    shells = [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]
    if not shells:
        raise ValueError(f"{type(model).__name__} has no MultiHeadAttention layers to convert")
    cfg = getattr(model, "cfg", None)
    use_cfg = cfg is not None and hasattr(cfg, "layer_attention") and len(shells) == cfg.num_layers
    if use_cfg:
        cfg = type(cfg)(**{**cfg.model_dump(), "num_kv_heads": num_kv_heads})  # validates divisibility
    for i, (name, attn) in enumerate(shells):
        kernel, opts = cfg.layer_attention(i) if use_cfg else (None, None)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, convert_shell(attn, num_kv_heads, kernel, opts,
                                             max_seq_len=cfg.max_seq_len if use_cfg else None))
    if use_cfg:
        model.cfg = cfg
    return model
