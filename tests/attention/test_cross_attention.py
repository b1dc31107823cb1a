"""Cross-attention through the shell: queries from one sequence, keys and values from a memory
(Vaswani et al. 2017's encoder-decoder attention), the memory's cache, and the errors users meet."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import (
    AttentionContext,
    CapabilityError,
    MultiHeadAttention,
    reference_attention,
)
from attnlab.attention.masks import context_mask

DIM, HEADS = 32, 4


def mha(kernel: str = "softmax", num_kv_heads: int = 2) -> MultiHeadAttention:
    torch.manual_seed(0)
    return MultiHeadAttention(DIM, HEADS, num_kv_heads, kernel=kernel).eval()


def test_shell_cross_attention_is_the_formula_on_the_projections():
    m = mha()
    x, memory = torch.randn(2, 5, DIM), torch.randn(2, 9, DIM)
    kpm = torch.ones(2, 9, dtype=torch.bool)
    kpm[1, 6:] = False
    ctx = AttentionContext(key_padding_mask=kpm)
    y, w = m(x, ctx, memory=memory, return_weights=True)
    q = m.split_heads(m.q_proj(x), HEADS)
    k, v = m.split_heads(m.k_proj(memory), 2), m.split_heads(m.v_proj(memory), 2)
    ref, ref_w = reference_attention(q, k, v, keep=context_mask(AttentionContext(cross=True, key_padding_mask=kpm), 5, 9))
    expected = m.out_proj(ref.transpose(1, 2).reshape(2, 5, DIM))
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    assert w[1, :, :, 6:].abs().max() == 0  # padded memory gets no weight
    assert not ctx.cross  # the caller's context is not changed


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_cached_decoder_equals_uncached_step_for_step(num_kv_heads):
    """The cross cache projects the memory once; each decoding step equals the full forward's row."""
    m = mha(num_kv_heads=num_kv_heads)
    x, memory = torch.randn(3, 7, DIM), torch.randn(3, 11, DIM)
    kpm = torch.rand(3, 11, generator=torch.Generator().manual_seed(1)) > 0.2
    ctx = AttentionContext(key_padding_mask=kpm)
    full = m(x, ctx, memory=memory)
    cache = m.new_cross_cache()
    steps = [m(x[:, t : t + 1], ctx, cache=cache, memory=memory if t == 0 else None) for t in range(7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    assert cache.seen == 7 and cache.k.shape == (3, num_kv_heads, 11, DIM // HEADS)


def test_cross_cache_projects_the_memory_once(monkeypatch):
    import attnlab.attention.shell as shell

    projections = []
    real = shell.linear
    monkeypatch.setattr(shell, "linear", lambda *a: projections.append(a[0].shape) or real(*a))
    m = mha()
    x, memory = torch.randn(1, 1, DIM), torch.randn(1, 4, DIM)
    cache = m.new_cross_cache()
    for step in range(5):
        m(x, cache=cache, memory=memory if step == 0 else None)
    assert projections == [memory.shape]  # the memory's k/v: one GEMM, on the first step only


def test_kernels_without_cross_attention_refuse_naming_those_that_can():
    x, memory = torch.randn(1, 4, DIM), torch.randn(1, 6, DIM)
    for name in ("sliding_window", "linear", "routing"):
        with pytest.raises(CapabilityError, match=r"does not support cross_attention.*Kernels that support "
                                                  r"cross_attention: \[.*'softmax'"):
            mha(name, num_kv_heads=HEADS)(x, memory=memory)


@pytest.mark.parametrize("make, message", [
    (lambda: AttentionContext(cross=True, causal=True), "cannot be causal"),
    (lambda: AttentionContext(query_document_ids=torch.zeros(1, 3, dtype=torch.long)), "query_document_ids"),
])
def test_bad_cross_contexts_are_one_line_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_memory_and_empty_cache_are_clear_errors():
    m = mha()
    x = torch.randn(2, 3, DIM)
    with pytest.raises(ValueError, match=r"memory of shape \(2, memory tokens, 32\)"):
        m(x, memory=torch.randn(2, 5, DIM + 1))
    with pytest.raises(ValueError, match="needs memory="):
        m(x, cache=m.new_cross_cache())
    with pytest.raises(ValueError, match="cannot be causal"):
        m(x, AttentionContext(causal=True), memory=torch.randn(2, 5, DIM))
    cache = m.new_cross_cache()
    m(x, cache=cache, memory=torch.randn(2, 5, DIM))
    with pytest.raises(ValueError, match="new cache for a new memory"):
        m(x, cache=cache, memory=torch.randn(2, 6, DIM))
    with pytest.raises(ValueError, match=r"query_document_ids must have shape \(batch, queries\) = \(2, 3\)"):
        m(x, AttentionContext(document_ids=torch.zeros(2, 5, dtype=torch.long),
                              query_document_ids=torch.zeros(2, 4, dtype=torch.long), cross=True),
          memory=torch.randn(2, 5, DIM))
