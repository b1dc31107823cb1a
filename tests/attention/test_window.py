"""Swin window attention (Liu et al. 2021): the relative position index, the shifted-window mask and the windowed
computation against dense attention under a brute-force mask built from region ids."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import AttentionContext, build_attention, reference_attention
from attnlab.attention.kernels.window import band_labels, from_windows, relative_position_index, to_windows


def test_relative_position_index_values():
    assert relative_position_index((2, 2)).tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    assert relative_position_index((2, 3))[0].tolist() == [7, 6, 5, 2, 1, 0]
    idx = relative_position_index((7, 7))
    assert idx.shape == (49, 49) and sorted(set(idx.flatten().tolist())) == list(range(169))
    assert (idx.diagonal() == 84).all() and (idx + idx.T == 168).all()


def _zeros_per_window(rows, cols, m, s):
    labels = band_labels(rows, cols, (m, m), s).reshape(1, 1, rows * cols, 1)
    lw = to_windows(labels, (rows, cols), (m, m), 0)[0, :, 0, :, 0]  # (nW, N)
    return (lw[:, :, None] == lw[:, None, :]).sum((1, 2)).tolist()


def test_shift_mask_zero_counts_match_the_paper_layout():
    assert _zeros_per_window(4, 4, 2, 1) == [16, 8, 8, 4]
    counts = _zeros_per_window(56, 56, 7, 3)
    assert len(counts) == 64 and set(counts) == {2401, 1225, 625}
    assert counts.count(625) == 1 and counts.count(1225) == 14  # the corner, and the edge straddles


def test_window_partition_round_trip_is_bitwise():
    x = torch.randn(2, 3, 8 * 12, 5)
    for s in (0, 2):
        assert torch.equal(from_windows(to_windows(x, (8, 12), (4, 6), s), (8, 12), (4, 6), s), x)


def _dense_reference_mask(rows, cols, m, s):
    """Brute force: same window of the rolled frame and the same region id, from coordinates."""
    keep = torch.zeros(rows * cols, rows * cols, dtype=torch.bool)
    def where(t):
        r, c = divmod(t, cols)
        rr, cc = (r - s) % rows, (c - s) % cols  # rolled coordinates
        band = lambda i, n: (i >= n - m) + (i >= n - s) if s else 0  # noqa: E731
        return (rr // m, cc // m), (band(rr, rows), band(cc, cols))
    for i in range(rows * cols):
        for j in range(rows * cols):
            (wi, li), (wj, lj) = where(i), where(j)
            keep[i, j] = wi == wj and li == lj
    return keep


@pytest.mark.parametrize("shift", [0, 2])
def test_shifted_window_attention_equals_dense_attention_with_bias(shift):
    torch.manual_seed(0)
    rows, cols, m, H, D = 8, 12, 4, 3, 8
    kernel = build_attention("window", structural=dict(num_heads=H, num_kv_heads=H, head_dim=D, max_seq_len=96),
                             window_size=m, shift=shift).eval()
    q, k, v = (torch.randn(2, H, rows * cols, D) for _ in range(3))
    ctx = AttentionContext(causal=False, grid=(rows, cols))
    keep = _dense_reference_mask(rows, cols, m, shift)
    assert torch.equal(kernel.pattern_mask(rows * cols, rows * cols, ctx), keep)
    # the bias of a pair in one window, looked up from the offsets directly
    bias = kernel.pattern_bias(rows * cols, rows * cols, ctx)[0]  # (H, T, T)
    i, j = 0, cols + 1  # (0, 0) and (1, 1): same window when shift == 0
    if shift == 0:
        assert torch.equal(bias[:, i, j], kernel.rel_bias[(0 - 1 + m - 1) * (2 * m - 1) + (0 - 1 + m - 1)])
    ref, _ = reference_attention(q, k, v, keep=keep, bias=bias[None], scale=D ** -0.5)
    torch.testing.assert_close(kernel(q, k, v, ctx), ref, atol=1e-5, rtol=1e-4)


def test_one_window_over_the_grid_without_bias_is_global_attention():
    q, k, v = (torch.randn(1, 2, 36, 8) for _ in range(3))
    kernel = build_attention("window", structural=dict(num_heads=2, num_kv_heads=2, head_dim=8, max_seq_len=36),
                             window_size=6, relative_bias=False)
    ref, _ = reference_attention(q, k, v)
    torch.testing.assert_close(kernel(q, k, v, AttentionContext(grid=(6, 6))), ref, atol=1e-5, rtol=1e-4)


def test_bad_grids_and_options_are_clear():
    s = dict(num_heads=2, num_kv_heads=2, head_dim=8, max_seq_len=64)
    kernel = build_attention("window", structural=s, window_size=4)
    q = torch.randn(1, 2, 30, 8)
    with pytest.raises(ValueError, match=r"grid \(5, 6\) is not a multiple of window_size \(4, 4\); pad the grid"):
        kernel(q, q, q, AttentionContext(grid=(5, 6)))
    with pytest.raises(Exception, match="pure grid"):
        kernel(torch.randn(1, 2, 17, 8), torch.randn(1, 2, 17, 8), torch.randn(1, 2, 17, 8),
               AttentionContext(grid=(4, 4)))
    with pytest.raises(ValueError, match=r"shift must be in \[0, 4\)"):
        build_attention("window", structural=s, window_size=4, shift=4)


@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_gradients_equal_dense_attention_with_bias(shift):
    """The gathers into window order and back carry their own backward (the inverse permutation): the gradients of
    q, k, v and the bias table must equal those of dense attention under the same mask and bias."""
    torch.manual_seed(1)
    rows, cols, m, H, D = 8, 12, 4, 2, 8
    kernel = build_attention("window", structural=dict(num_heads=H, num_kv_heads=H, head_dim=D, max_seq_len=96),
                             window_size=m, shift=shift)
    ctx = AttentionContext(causal=False, grid=(rows, cols))
    qkv = [torch.randn(2, H, rows * cols, D, requires_grad=True) for _ in range(3)]
    weights = torch.randn(2, H, rows * cols, D)
    (kernel(*qkv, ctx) * weights).sum().backward()
    ours = [t.grad.clone() for t in qkv] + [kernel.rel_bias.grad.clone()]
    for t in [*qkv, kernel.rel_bias]:
        t.grad = None
    keep = _dense_reference_mask(rows, cols, m, shift)
    bias = kernel.pattern_bias(rows * cols, rows * cols, ctx)
    ref, _ = reference_attention(*qkv, keep=keep, bias=bias, scale=D ** -0.5)
    (ref * weights).sum().backward()
    for got, want in zip(ours, [t.grad for t in qkv] + [kernel.rel_bias.grad]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_window_order_is_the_partition_of_the_rolled_grid():
    from attnlab.attention.kernels.window import window_order

    x = torch.arange(8 * 12).view(1, 1, 96, 1)
    for s in (0, 3):
        perm, inv = window_order((8, 12), (4, 6), s)
        assert torch.equal(perm, to_windows(x, (8, 12), (4, 6), s).reshape(-1))
        assert torch.equal(perm[inv], torch.arange(96))


def test_window_attention_first_called_in_inference_mode_still_trains():
    """The window order is cached at the first call and saved for backward by later ones: made under
    ``torch.inference_mode`` it would be an inference tensor, which autograd refuses to save."""
    kernel = build_attention("window", structural=dict(num_heads=2, num_kv_heads=2, head_dim=8, max_seq_len=96),
                             window_size=4, shift=2)
    ctx = AttentionContext(causal=False, grid=(8, 12))
    q = torch.randn(1, 2, 96, 8)
    with torch.inference_mode():
        kernel(q, q, q, ctx)
    qg = q.clone().requires_grad_()
    kernel(qg, qg, qg, ctx).square().sum().backward()
    assert qg.grad is not None and qg.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["bf16 tensors", "bf16 autocast"])
def test_window_attention_in_bf16_takes_fp32_logits(mode):
    """Logits of standard deviation ~6 (trained Swin heads reach such scales): rounded to bf16 before the softmax
    they would move outputs by ~0.1-0.4; with fp32 logits (as SDPA computes them) only the probabilities and the
    output carry bf16 rounding. Reference: fp64 dense attention on the same bf16-rounded inputs and bias table."""
    torch.manual_seed(0)
    H, D, grid = 2, 16, (14, 14)
    kernel = build_attention("window", structural=dict(num_heads=H, num_kv_heads=H, head_dim=D, max_seq_len=196),
                             window_size=7, shift=3)
    with torch.no_grad():
        kernel.rel_bias.normal_(0, 2)
    ctx = AttentionContext(causal=False, grid=grid)
    q, k, v = (torch.randn(2, H, 196, D).bfloat16() for _ in range(3))
    q = (q * 6).bfloat16()
    if mode == "bf16 tensors":
        kernel = kernel.bfloat16()
        out = kernel(q, k, v, ctx)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = kernel(q, k, v, ctx)
    assert out.dtype == torch.bfloat16
    keep = _dense_reference_mask(*grid, 7, 3)
    bias = kernel.pattern_bias(196, 196, ctx).double()
    ref, _ = reference_attention(q.double(), k.double(), v.double(), keep=keep, bias=bias, scale=D ** -0.5)
    assert (out.double() - ref).abs().max() < 0.03
