"""attnlab.native.attention.documents_attention: the one call that picks the native attention kernel for the
dtype and for whether a gradient is wanted (or returns None for PyTorch)."""

from __future__ import annotations

import pytest
import torch

from attnlab import native
from attnlab.native import documents, documents_fp32
from attnlab.native.attention import documents_attention
from attnlab.native.documents import documents_attention_bf16, trainable_documents_attention_bf16
from attnlab.native.documents_fp32 import documents_attention_fp32
from native_cpu import HAS_AMX, family_runs, needs_native

SPANS = [[(0, 30), (30, 50)], [(0, 50)]]


def _qkv(dtype, heads=4, kv_heads=2, length=50, head_dim=32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, length, head_dim, generator=g).to(dtype)
    k, v = (torch.randn(2, kv_heads, length, head_dim, generator=g).to(dtype) for _ in range(2))
    return q, k, v


@pytest.mark.skipif(not family_runs("attention_fp32"), reason="needs AVX-512F, FMA and gcc")
@pytest.mark.parametrize("causal", [True, False])
def test_float32_goes_to_the_fp32_kernel(monkeypatch, causal):
    calls = []
    real = documents_fp32.attend_documents_fp32_op
    monkeypatch.setattr(documents_fp32, "attend_documents_fp32_op", lambda *a: calls.append(a[4]) or real(*a))
    q, k, v = _qkv(torch.float32)
    out = documents_attention(q, k, v, SPANS, causal=causal, scale=0.2)
    assert torch.equal(out, documents_attention_fp32(q, k, v, SPANS, causal=causal, scale=0.2))
    whole = documents_attention(q, k, v, None, causal=causal, scale=None)  # each row one document
    assert torch.equal(whole, documents_attention_fp32(q, k, v, [[(0, 50)]] * 2, causal=causal, scale=None))
    assert calls == [causal] * 4


@needs_native
def test_bfloat16_inference_goes_to_the_inference_kernel(monkeypatch):
    calls = []
    real = documents.attend_documents_op
    monkeypatch.setattr(documents, "attend_documents_op", lambda *a: calls.append(a[7]) or real(*a))
    q, k, v = _qkv(torch.bfloat16)
    with torch.inference_mode():
        out = documents_attention(q, k, v, SPANS, causal=True, scale=None)
        assert torch.equal(out, documents_attention_bf16(q, k, v, SPANS, causal=True, scale=None))
        whole = documents_attention(q, k, v, None, causal=False, scale=None)
        assert torch.equal(whole, documents_attention_bf16(q, k, v, [[(0, 50)]] * 2, causal=False, scale=None))
    assert calls == [False] * 4  # with_lse: the forward-only kernel


@needs_native
def test_bfloat16_with_a_gradient_goes_to_the_trainable_kernel():
    """The trainable bf16 kernel needs AMX: elsewhere the answer is None (PyTorch), never the forward-only
    kernel, whose output has no gradient."""
    q, k, v = _qkv(torch.bfloat16)
    q = q.requires_grad_()
    out = documents_attention(q, k, v, SPANS, causal=True, scale=None)
    assert (out is None) == (not HAS_AMX)
    if HAS_AMX:
        assert torch.equal(out, trainable_documents_attention_bf16(q, k, v, SPANS, causal=True, scale=None))
        out.float().sum().backward()
        assert q.grad is not None
    with torch.no_grad():  # no gradient wanted: the inference kernel
        assert documents_attention(q, k, v, SPANS, causal=True, scale=None) is not None


def test_other_dtypes_no_tokens_and_the_switch_give_none():
    for dtype in (torch.float16, torch.float64):
        q, k, v = _qkv(dtype)
        assert documents_attention(q, k, v, SPANS, causal=True, scale=None) is None
    q, k, v = _qkv(torch.float32)
    empty = q[:, :, :0]  # no tokens: PyTorch returns the empty result (a (0, 0) span table would be refused)
    assert documents_attention(empty, empty, empty, None, causal=True, scale=None) is None
    with native.disabled():
        assert documents_attention(q, k, v, None, causal=True, scale=None) is None


@pytest.mark.skipif(not family_runs("attention_fp32"), reason="needs AVX-512F, FMA and gcc")
def test_spans_that_do_not_tile_the_rows_are_refused():
    q, k, v = _qkv(torch.float32)
    with pytest.raises(ValueError, match="spans"):
        documents_attention(q, k, v, [[(0, 30), (31, 50)], [(0, 50)]], causal=True, scale=None)
