"""The native kernels of a decoding step (attnlab.native.decode): few-row linear layers and few-query attention,
against the reference formulas on full tensors, and where they apply or decline."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.native import decode
from native_cpu import family_runs

pytestmark = pytest.mark.skipif(not family_runs("decode"), reason="needs x86-64 with AVX-512 BF16 and gcc")


def bf16_exact(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to bf16 and back: the operands the bf16 kernels multiply exactly."""
    return t.bfloat16().float()


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 64), k=st.integers(1, 300), n=st.integers(1, 70), bias=st.booleans(),
       lead=st.sampled_from([(), (2,)]))
def test_fp32_linear_equals_the_formula(rows, k, n, bias, lead):
    g = torch.Generator().manual_seed(rows * 1000 + k * 7 + n)
    x = torch.randn(*lead, rows, k, generator=g)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g) if bias else None
    with torch.no_grad():
        got = decode.linear(x, w, b)
        assert decode.usable(x, w, b) == (torch.float32 if x.numel() // k <= decode.MAX_ROWS else None)
    ref = (x.double() @ w.double().t() + (0 if b is None else b.double())).float()
    assert got.shape == ref.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * math.sqrt(k))


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 40), half_k=st.integers(1, 150), n=st.integers(1, 70), bias=st.booleans())
def test_bf16_linear_sums_exact_products_in_fp32(rows, half_k, n, bias):
    k = 2 * half_k
    g = torch.Generator().manual_seed(rows * 1000 + k * 7 + n)
    x, w = torch.randn(rows, k, generator=g).bfloat16(), torch.randn(n, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g) if bias else None
    with torch.no_grad():
        got = decode.linear(x, w, b)
    assert got.dtype == torch.bfloat16
    ref = x.double() @ w.double().t() + (0 if b is None else b.double())
    # fp32 sums of exact products, then one rounding to bf16 (relative 2^-8)
    torch.testing.assert_close(got.double(), ref, rtol=2 ** -8, atol=1e-4 * math.sqrt(k))


def test_autocast_takes_bf16_like_f_linear():
    x, w, b = torch.randn(8, 256), torch.randn(1000, 256), torch.randn(1000)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, ref = decode.linear(x, w, b), F.linear(x, w, b)
    assert got.dtype == ref.dtype == torch.bfloat16
    exact = bf16_exact(x) @ bf16_exact(w).t() + b
    assert (got.float() - exact).abs().max() <= 2 ** -8 * exact.abs().max()


def test_a_weight_changed_in_place_is_repacked():
    x, w = torch.randn(4, 64), torch.randn(48, 64)
    with torch.no_grad():
        before = decode.linear(x, w)
        w.mul_(2)  # same storage, new version
        after = decode.linear(x, w)
    torch.testing.assert_close(after, 2 * before, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(after, x @ w.t(), rtol=1e-5, atol=1e-5)


def test_packed_copies_go_with_their_weight():
    w = torch.randn(32, 16)
    with torch.no_grad():
        decode.linear(torch.randn(2, 16), w)
    assert any(entry[0]() is w for entry in decode._packed.values())
    del w
    assert all(entry[0]() is not None for entry in decode._packed.values())
    decode.release()
    assert not decode._packed


@pytest.mark.parametrize("case", ["grad", "rows", "odd_bf16", "mixed"])
def test_linear_declines_what_it_does_not_serve(case):
    w = torch.randn(16, 33 if case == "odd_bf16" else 32)
    x = torch.randn(100 if case == "rows" else 4, w.shape[1])
    if case == "grad":
        w.requires_grad_(True)
        assert decode.usable(x, w, None) is None
        return
    if case == "odd_bf16":
        x, w = x.bfloat16(), w.bfloat16()
    if case == "mixed":
        x = x.double()
    with torch.no_grad():
        assert decode.usable(x, w, None) is None


def reference_attention(q, k, v, keep, bias, scale):
    """softmax(scale q k^T + bias, masked) v in float64, kv heads repeated; rows with no key kept -> 0."""
    H, Hkv = q.shape[1], k.shape[1]
    k, v = (t.double().repeat_interleave(H // Hkv, dim=1) for t in (k, v))
    s = scale * q.double() @ k.transpose(-1, -2)
    if bias is not None:
        s = s + bias.double()
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p @ v


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 4), kv=st.sampled_from([(4, 4), (4, 2), (6, 1)]), t=st.integers(1, 16),
       s=st.integers(1, 90), dh=st.sampled_from([16, 64, 80]), masks=st.sampled_from(["none", "keep", "bias", "both"]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), scale=st.sampled_from([None, 1.0]))
def test_decoding_attention_equals_the_formula(b, kv, t, s, dh, masks, dtype, scale):
    H, Hkv = kv
    g = torch.Generator().manual_seed(b * 100 + t * 10 + s)
    q = torch.randn(b, H, t, dh, generator=g).to(dtype)
    cache = torch.randn(2, b, Hkv, s + 5, dh, generator=g).to(dtype)  # a cache buffer: filled part only
    k, v = cache[0, :, :, :s], cache[1, :, :, :s]
    keep = torch.rand(b, 1, t, s, generator=g) > 0.3 if masks in ("keep", "both") else None
    if keep is not None:
        keep[0, :, 0] = False  # a query with every key masked
    bias = torch.randn(1, H, t, s, generator=g) if masks in ("bias", "both") else None
    with torch.no_grad():
        got = decode.attention(q, k, v, keep, bias, scale=scale)
    ref = reference_attention(q, k, v, keep, bias, dh ** -0.5 if scale is None else scale)
    assert got is not None and got.dtype == dtype and got.shape == (b, H, t, dh)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2 ** -7, atol=2 ** -7)
    torch.testing.assert_close(got.double(), ref, **tol)
    if keep is not None:
        assert not got[0, :, 0].any()


@pytest.mark.parametrize("case", ["queries", "head_dim", "grad", "dtypes", "mixed"])
def test_decoding_attention_declines_what_it_does_not_serve(case):
    q, k, v = torch.randn(2, 4, 1, 32), torch.randn(2, 4, 7, 32), torch.randn(2, 4, 7, 32)
    if case == "queries":
        q = torch.randn(2, 4, decode.MAX_QUERIES + 1, 32)
    if case == "head_dim":
        q, k, v = q[..., :24], k[..., :24], v[..., :24]
    if case == "grad":
        q.requires_grad_(True)
        assert decode.attention(q, k, v) is None
        return
    if case == "dtypes":
        k = k.bfloat16()  # k and v of different dtypes
    if case == "mixed":
        q = q.bfloat16()  # autocast's bf16 queries against an fp32 cache
    with torch.no_grad():
        assert decode.attention(q, k, v) is None
