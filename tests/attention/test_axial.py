"""axial: row / column passes are exact; sequential and sum equal their stated compositions."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionContext, CapabilityError, build_attention, reference_attention
from attnlab.attention.reference import expand_kv_heads


def qkv(B, H, Hkv, T, S, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).requires_grad_()  # noqa: E731
    return mk(B, H, T, D), mk(B, Hkv, S, D), mk(B, Hkv, S, D)


def check_grads(out, ref, inputs):
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def axis_keep(rows, cols, axis, causal):
    """Independent masks: same row / same column, optionally causal along that axis."""
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    y, x = y.reshape(-1), x.reshape(-1)
    if axis == "row":
        keep = (y[:, None] == y[None, :]) & (~torch.tensor(causal) | (x[None, :] <= x[:, None]))
    else:
        keep = (x[:, None] == x[None, :]) & (~torch.tensor(causal) | (y[None, :] <= y[:, None]))
    return keep[None, None]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("grid", [(4, 6), (7, 3), (1, 9)])
def test_modes_match_reference_compositions(grid, causal):
    rows, cols = grid
    T = rows * cols
    q, k, v = qkv(2, 4, 2, T, T)
    ctx = AttentionContext(grid=grid, causal=causal)
    row = lambda vals, keys: reference_attention(q, keys, vals, keep=axis_keep(rows, cols, "row", causal))[0]  # noqa: E731
    col = lambda vals, keys: reference_attention(q, keys, vals, keep=axis_keep(rows, cols, "column", causal))[0]  # noqa: E731
    want = {
        "row": row(v, k),
        "column": col(v, k),
        "sum": row(v, k) + col(v, k),
        "sequential": col(row(v, k), expand_kv_heads(k, 4)),
    }
    for mode, ref in want.items():
        kernel = build_attention("axial", mode=mode, recompute=mode == "sequential" and causal)
        check_grads(kernel(q, k, v, ctx), ref, (q, k, v))


def test_one_row_grid_is_full_attention():
    """On a 1 x N grid, row attention (and rows-then-columns) is full 1-D attention."""
    q, k, v = qkv(1, 2, 2, 10, 10)
    for mode in ("row", "sequential"):
        out = build_attention("axial", mode=mode)(q, k, v, AttentionContext(grid=(1, 10)))
        check_grads(out, reference_attention(q, k, v)[0], (q, k, v))


def test_sequential_reaches_whole_grid_and_causal_quadrant():
    rows, cols = 4, 5
    T = rows * cols
    for causal in (False, True):
        q, k, v = qkv(1, 1, 1, T, T)
        out = build_attention("axial")(q, k, v, AttentionContext(grid=(rows, cols), causal=causal))
        out[0, 0, 13].sum().backward()  # query (2, 3)
        touched = (v.grad[0, 0].abs().sum(-1) > 0).view(rows, cols)
        want = torch.ones(rows, cols, dtype=torch.bool)
        if causal:
            want = torch.zeros(rows, cols, dtype=torch.bool)
            want[:3, :4] = True
        assert torch.equal(touched, want)


def test_attention_weights_reproduce_forward():
    q, k, v = qkv(2, 4, 2, 12, 12)
    kpm = torch.ones(2, 12, dtype=torch.bool)
    kpm[1, 5:] = False
    ctx = AttentionContext(grid=(3, 4), causal=True, key_padding_mask=kpm)
    for mode in ("sequential", "sum", "row", "column"):
        kernel = build_attention("axial", mode=mode)
        out = kernel(q, k, v, ctx)
        w = kernel.attention_weights(q, k, v, ctx)
        torch.testing.assert_close(out, w @ expand_kv_heads(v, 4), atol=1e-5, rtol=1e-4)


def test_padding_and_documents_row_mode():
    rows, cols, T = 3, 5, 15
    q, k, v = qkv(2, 2, 2, T, T)
    kpm = torch.rand(2, T, generator=torch.Generator().manual_seed(1)) > 0.3
    docs = torch.tensor([[0] * 7 + [1] * 8, [0] * 15])
    ctx = AttentionContext(grid=(rows, cols), key_padding_mask=kpm, document_ids=docs)
    keep = axis_keep(rows, cols, "row", False) & kpm[:, None, None, :] & (docs[:, None, :, None] == docs[:, None, None, :])
    ref, _ = reference_attention(q, k, v, keep=keep)
    valid = kpm[:, None, :, None].float()
    check_grads(build_attention("axial", mode="row")(q, k, v, ctx) * valid, ref * valid, (q, k, v))


def test_capabilities_and_errors():
    assert build_attention("axial", mode="row").capabilities.exact
    assert not build_attention("axial").capabilities.exact
    with pytest.raises(ValueError, match="mode"):
        build_attention("axial", mode="diagonal")
    q, k, v = qkv(1, 1, 1, 12, 12)
    with pytest.raises(CapabilityError, match="grid"):
        build_attention("axial")(q, k, v, AttentionContext())
    with pytest.raises(ValueError, match="rows\\*cols"):
        build_attention("axial")(q, k, v, AttentionContext(grid=(5, 5)))
