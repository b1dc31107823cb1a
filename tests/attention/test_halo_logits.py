"""HaloNet's factorised relative-position logits in ``block_local`` (Vaswani et al. 2021; timm's ``PosEmbedRel``):
``q.k / sqrt(Dh) + q.R_h[dy] + q.R_w[dx]`` against the dense formula written out here, forward and gradients
(queries, keys, values and both tables), on grids the blocks do not divide, with GQA, in 1-D (a one-row grid),
and the dense map."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionContext, MultiHeadAttention, build_attention, reference_attention


def dense_logits(q, R_h, R_w, grid, T):
    """``(B, H, T, T)`` relative logits written out: every (query, key) pair's row and column offsets."""
    W = (R_w.shape[0] + 1) // 2
    pos = torch.arange(T)
    cols = T if grid is None else grid[1]
    dy = pos[None, :] // cols - pos[:, None] // cols
    dx = pos[None, :] % cols - pos[:, None] % cols
    rel = torch.einsum("bhtd,tsd->bhts", q, R_w[(dx + W - 1).clamp(0, 2 * W - 2)])
    return rel + torch.einsum("bhtd,tsd->bhts", q, R_h[(dy + W - 1).clamp(0, 2 * W - 2)])  # 1-D: one row, dy = 0


@pytest.mark.parametrize("grid, b, h, H, Hk", [((6, 7), 3, 1, 4, 2), ((5, 5), 5, 2, 2, 2), ((4, 9), 2, 2, 2, 1),
                                                (None, 4, 2, 2, 2)])
def test_relative_logits_equal_the_dense_formula(grid, b, h, H, Hk):
    torch.manual_seed(0)
    T = 20 if grid is None else grid[0] * grid[1]
    kernel = build_attention("block_local", structural=dict(num_heads=H, head_dim=16), block_size=b, halo=h,
                             relative_logits=True).double()
    with torch.no_grad():  # large tables: the logits matter
        kernel.rel_h.normal_()
        kernel.rel_w.normal_()
    q = torch.randn(2, H, T, 16, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, Hk, T, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))
    ctx = AttentionContext(grid=grid)
    out = kernel(q, k, v, ctx)
    keep = kernel.full_mask(T, T, ctx, None)
    if b >= max(grid or (T,)):
        assert keep.all()  # one block covers the grid: global attention with the same logits (the spec's test)
    bias = dense_logits(q, kernel.rel_h, kernel.rel_w, grid, T)
    ref, ref_w = reference_attention(q, k.repeat_interleave(H // Hk, 1), v.repeat_interleave(H // Hk, 1), keep=keep,
                                     bias=bias, scale=16 ** -0.5)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # the reference's softmax runs in fp32
    torch.testing.assert_close(kernel.attention_weights(q, k, v, ctx), ref_w, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    wrt = [q, k, v, kernel.rel_w, kernel.rel_h]  # 1-D: R_h's gradient is ~0 (one row term per query), but it is
    # in the graph, so distributed training sees every parameter used
    for got, want in zip(torch.autograd.grad((out * g).sum(), wrt), torch.autograd.grad((ref * g).sum(), wrt)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_relative_logits_change_the_output_and_train_in_a_shell():
    torch.manual_seed(1)
    plain = MultiHeadAttention(32, 4, kernel="block_local", kernel_options=dict(block_size=3, halo=1))
    rel = MultiHeadAttention(32, 4, kernel="block_local", kernel_options=dict(block_size=3, halo=1,
                                                                              relative_logits=True))
    rel.load_state_dict(plain.state_dict(), strict=False)  # the same projections, plus the tables
    assert rel.kernel.rel_h.shape == (2 * (3 + 2) - 1, 8)  # tables of 2W - 1 rows for the head size
    x, ctx = torch.randn(2, 30, 32), AttentionContext(grid=(5, 6))
    assert not torch.allclose(plain(x, ctx), rel(x, ctx))
    rel(x, ctx).square().mean().backward()
    assert rel.kernel.rel_h.grad.abs().sum() > 0 and rel.kernel.rel_w.grad.abs().sum() > 0


def test_relative_logits_need_the_head_size():
    with pytest.raises(ValueError, match="relative_logits needs head_dim"):
        build_attention("block_local", relative_logits=True)
