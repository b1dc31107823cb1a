"""block_local (HaloNet, pad_mode="mask"): exact against the dense reference with an explicit halo mask."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.attention import AttentionContext, build_attention, reference_attention


def qkv(B, H, Hkv, T, S, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).requires_grad_()  # noqa: E731
    return mk(B, H, T, D), mk(B, Hkv, S, D), mk(B, Hkv, S, D)


def assert_matches(kernel, q, k, v, ctx, keep, valid_rows=None):
    """Forward and q/k/v gradients equal the reference with mask ``keep`` (fp32, atol 1e-5)."""
    out, (ref, _) = kernel(q, k, v, ctx), reference_attention(q, k, v, keep=keep)
    grad = torch.randn_like(out)
    if valid_rows is not None:  # outputs of pad queries are unspecified
        grad, out, ref = (t * valid_rows[:, None, :, None] for t in (grad, out, ref))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def halo_mask_1d(L: int, b: int, h: int) -> torch.Tensor:
    """Written with loops on purpose: query i sees the halo window of its block, clipped to [0, L)."""
    keep = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        start = (i // b) * b
        keep[i, max(0, start - h) : min(L, start + b + h)] = True
    return keep


def halo_mask_2d(rows: int, cols: int, b: int, h: int) -> torch.Tensor:
    keep = torch.zeros(rows, cols, rows, cols, dtype=torch.bool)
    for y in range(rows):
        for x in range(cols):
            y0, x0 = (y // b) * b, (x // b) * b
            keep[y, x, max(0, y0 - h) : y0 + b + h, max(0, x0 - h) : x0 + b + h] = True
    return keep.reshape(rows * cols, rows * cols)


@settings(max_examples=20, deadline=None)
@given(L=st.integers(1, 40), b=st.integers(1, 9), h=st.integers(0, 4), causal=st.booleans())
def test_1d_matches_reference(L, b, h, causal):
    q, k, v = qkv(2, 4, 2, L, L, seed=L)
    keep = halo_mask_1d(L, b, h)
    if causal:
        keep = keep & torch.ones(L, L, dtype=torch.bool).tril()
    assert_matches(build_attention("block_local", block_size=b, halo=h), q, k, v, AttentionContext(causal=causal),
                   keep[None, None])


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 10), cols=st.integers(1, 10), b=st.integers(1, 5), h=st.integers(0, 3))
def test_2d_matches_reference_on_non_divisible_grids(rows, cols, b, h):
    T = rows * cols
    q, k, v = qkv(1, 2, 2, T, T, seed=T)
    kernel = build_attention("block_local", block_size=b, halo=h)
    assert_matches(kernel, q, k, v, AttentionContext(grid=(rows, cols)), halo_mask_2d(rows, cols, b, h)[None, None])


def test_block_covering_grid_is_full_attention():
    q, k, v = qkv(2, 4, 1, 48, 48)
    kernel = build_attention("block_local", block_size=8, halo=2)
    assert_matches(kernel, q, k, v, AttentionContext(grid=(6, 8)), None)
    assert_matches(kernel, q[:, :, :8], k[:, :, :8], v[:, :, :8], AttentionContext(), None)


def test_zero_halo_is_non_overlapping_windows():
    L, b = 20, 5
    q, k, v = qkv(1, 2, 2, L, L)
    blocks = torch.arange(L) // b
    keep = (blocks[:, None] == blocks[None, :])[None, None]
    assert_matches(build_attention("block_local", block_size=b, halo=0), q, k, v, AttentionContext(), keep)


@pytest.mark.parametrize("recompute", [False, True])
def test_padding_documents_gqa_2d(recompute):
    rows, cols, T = 5, 6, 30
    q, k, v = qkv(2, 6, 3, T, T)
    kpm = torch.rand(2, T, generator=torch.Generator().manual_seed(2)) > 0.3
    docs = torch.tensor([[0] * 12 + [1] * 18, [4] * 30])
    ctx = AttentionContext(grid=(rows, cols), key_padding_mask=kpm, document_ids=docs)
    keep = halo_mask_2d(rows, cols, 2, 1)[None, None] & kpm[:, None, None, :]
    keep = keep & (docs[:, None, :, None] == docs[:, None, None, :])
    kernel = build_attention("block_local", block_size=2, halo=1, recompute=recompute)
    assert_matches(kernel, q, k, v, ctx, keep, valid_rows=kpm.float())


def test_locality_of_gradients():
    """A block's output has zero gradient w.r.t. keys outside its halo window."""
    q, k, v = qkv(1, 1, 1, 24, 24)
    out = build_attention("block_local", block_size=4, halo=2)(q, k, v, AttentionContext())
    out[:, :, 8:12].sum().backward()  # block 2 -> window [6, 14)
    touched = (k.grad.abs().sum(-1) + v.grad.abs().sum(-1))[0, 0] > 0
    assert touched[6:14].all() and not touched[:6].any() and not touched[14:].any()


def test_errors_are_clear():
    with pytest.raises(ValueError, match="block_size"):
        build_attention("block_local", block_size=0)
    with pytest.raises(ValueError, match="halo"):
        build_attention("block_local", halo=-1)
    q, k, v = qkv(1, 1, 1, 4, 9)
    with pytest.raises(ValueError, match="T=4, S=9"):
        build_attention("block_local")(q, k, v, AttentionContext())
