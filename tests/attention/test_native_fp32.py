"""The native fp32 per-document attention kernel (attnlab/native/csrc/attention_fp32.c): forward and
backward against the float64 formula, the softmax kernel's routing to it, and a GPT trained on it."""

from __future__ import annotations

import ctypes

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import native
from attnlab.attention import AttentionContext, build_attention
from attnlab.native import documents_fp32
from attnlab.native.documents_fp32 import MAX_DOC_LEN_FP32, documents_attention_fp32
from native_cpu import needs_native

pytestmark = needs_native


def _packed(lengths, heads=4, kv_heads=4, head_dim=32, batch=1, seed=0, contiguous=False):
    """q (B, H, T, Dh), k, v (B, Hkv, T, Dh) fp32: strided views of one fused projection as the shell makes
    them (or contiguous copies); spans: the documents of every row."""
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    qkv = torch.randn(batch, T, (heads + 2 * kv_heads) * head_dim, generator=g) * 1.5
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k, v = (t.unflatten(-1, (-1, head_dim)).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, Dh)
    if contiguous:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    ends = torch.tensor(lengths).cumsum(0).tolist()
    return q, k, v, [list(zip([0] + ends[:-1], ends))] * batch


def _formula(q, k, v, spans, causal, scale=None):
    """Softmax attention per document, heads expanded by repeat_interleave, in q's dtype (differentiable)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    rows = []
    for b, row in enumerate(spans):
        parts = []
        for s, e in row:
            scores = q[b, :, s:e] @ k[b, :, s:e].transpose(-1, -2) * scale  # (H, L, L)
            if causal:
                scores = scores.masked_fill(torch.ones(e - s, e - s, dtype=torch.bool).triu(1), float("-inf"))
            parts.append(scores.softmax(-1) @ v[b, :, s:e])
        rows.append(torch.cat(parts, dim=1))
    return torch.stack(rows)


def _grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return out, q.grad, k.grad, v.grad


@settings(deadline=None, max_examples=40)
@given(lengths=st.lists(st.integers(1, 90), min_size=1, max_size=4), causal=st.booleans(),
       head_dim=st.sampled_from([16, 32, 48, 64, 80]), gqa=st.sampled_from([(4, 4), (4, 2), (3, 1)]),
       contiguous=st.booleans())
def test_forward_and_gradients_match_the_float64_formula(lengths, causal, head_dim, gqa, contiguous):
    """Output and q/k/v gradients within fp32 rounding of float64 autograd of the formula, for documents of
    any length (tails of the 6-row blocks and 16-column vectors), head sizes, GQA groupings and layouts.
    Rounding bound: 2e-6 of the largest value, and for dq, dk (which cancel in dP - D) 1e-7 of the size
    of their terms, scale * max|dP| * max|k or q| with |dP| <= |dO row| |V row| (Cauchy-Schwarz)."""
    q, k, v, spans = _packed(lengths, *gqa, head_dim=head_dim, batch=2, contiguous=contiguous)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    native_ = _grads(lambda a, b, c: documents_attention_fp32(a, b, c, spans, causal=causal, scale=None), q, k, v,
                     dout)
    exact = _grads(lambda a, b, c: _formula(a.double(), b.double(), c.double(), spans, causal), q, k, v,
                   dout.double())
    terms = head_dim ** -0.5 * dout.norm(dim=-1).max() * v.norm(dim=-1).max()
    floors = {"out": 0.0, "dq": terms * k.abs().max(), "dk": terms * q.abs().max(), "dv": 0.0}
    for name, n, e in zip(("out", "dq", "dk", "dv"), native_, exact):
        assert n.dtype == torch.float32 and n.shape == e.shape, name
        err = (n.double() - e).abs().max().item()
        assert err <= 2e-6 * e.abs().max().item() + 1e-7 * float(floors[name]) + 1e-9, (name, err, e.abs().max())


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("scale", [0.3, -0.2])
def test_long_documents_any_scale_and_row_specific_spans(causal, scale):
    """Forward, log-sum-exp and gradients for documents of up to 300 tokens (50 row blocks), different
    documents in each batch row, head size 128, GQA, and a positive or negative score scale, against the
    float64 formula."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 305, 128, generator=g)
    k, v = torch.randn(2, 2, 305, 128, generator=g), torch.randn(2, 2, 305, 128, generator=g)
    spans = [[(0, 300), (300, 305)], [(0, 100), (100, 305)]]
    dout = torch.randn(q.shape, generator=g)
    native_ = _grads(lambda a, b, c: documents_attention_fp32(a, b, c, spans, causal=causal, scale=scale), q, k, v,
                     dout)
    exact = _grads(lambda a, b, c: _formula(a.double(), b.double(), c.double(), spans, causal, scale), q, k, v,
                   dout.double())
    for name, n, e in zip(("out", "dq", "dk", "dv"), native_, exact):
        assert (n.double() - e).abs().max() <= 5e-6 * e.abs().max(), name
    table = torch.tensor([(b, s, e - s) for b, row in enumerate(spans) for s, e in row], dtype=torch.int64)
    _, lse = documents_fp32.attend_documents_fp32_op(q, k, v, table, causal, scale, True)
    group = q.shape[1] // k.shape[1]
    for b, row in enumerate(spans):
        for s, e in row:
            scores = q[b, :, s:e].double() @ k[b, :, s:e].repeat_interleave(group, 0).double().transpose(-1, -2) * scale
            if causal:
                scores = scores.masked_fill(torch.ones(e - s, e - s, dtype=torch.bool).triu(1), float("-inf"))
            expected = torch.logsumexp(scores, -1) / torch.log(torch.tensor(2.0, dtype=torch.float64))  # base 2
            assert (lse[b, :, s:e].double() - expected).abs().max() < 1e-5


def test_spans_must_tile_each_row_and_batches_must_agree():
    """Spans are checked before the kernel trusts them (a clear error, not memory corruption); mismatched
    batch sizes are left to PyTorch (None)."""
    q, k, v, _ = _packed([10, 6], head_dim=32, batch=2)
    bad = {"a row too few": [[(0, 16)]], "a gap": [[(0, 8), (9, 16)]] * 2, "past the end": [[(0, 1000)]] * 2,
           "overlap": [[(0, 10), (5, 16)]] * 2, "short": [[(0, 10)]] * 2, "empty run": [[(0, 0), (0, 16)]] * 2}
    for name, spans in bad.items():
        with pytest.raises(ValueError, match="spans"):
            documents_attention_fp32(q, k, v, spans, causal=True, scale=None)
    assert documents_attention_fp32(q, k[:1], v[:1], [[(0, 16)]] * 2, causal=True, scale=None) is None


def test_long_causal_document_and_the_length_limit():
    """A 500-token causal document (84 row blocks, 32 key vectors) matches the formula; a document longer
    than MAX_DOC_LEN_FP32 is left to PyTorch (None) and the softmax kernel still gives the result."""
    q, k, v, spans = _packed([500, 7], heads=2, kv_heads=2, head_dim=64)
    out = documents_attention_fp32(q, k, v, spans, causal=True, scale=None)
    exact = _formula(q.double(), k.double(), v.double(), spans, True)
    assert (out.double() - exact).abs().max() < 2e-6 * exact.abs().max()
    q, k, v, spans = _packed([MAX_DOC_LEN_FP32 + 1, 3], heads=2, kv_heads=2, head_dim=32)
    assert documents_attention_fp32(q, k, v, spans, causal=False, scale=None) is None
    doc_ids = torch.tensor([[0] * (MAX_DOC_LEN_FP32 + 1) + [1] * 3])
    got = build_attention("softmax")(q, k, v, AttentionContext(document_ids=doc_ids))
    assert (got.double() - _formula(q.double(), k.double(), v.double(), spans, False)).abs().max() < 1e-5


def test_custom_scale_and_unfit_inputs():
    q, k, v, spans = _packed([33], head_dim=32)
    out = documents_attention_fp32(q, k, v, spans, causal=False, scale=0.05)
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.05)
    assert (out.double() - exact).abs().max() < 1e-6
    q24, k24, v24, spans24 = _packed([9], head_dim=24)  # head_dim % 16 != 0
    assert documents_attention_fp32(q24, k24, v24, spans24, causal=True, scale=None) is None
    assert documents_attention_fp32(q.double(), k.double(), v.double(), spans, causal=True, scale=None) is None
    assert documents_attention_fp32(q.bfloat16(), k.bfloat16(), v.bfloat16(), spans, causal=True, scale=None) is None
    with native.disabled():
        assert documents_attention_fp32(q, k, v, spans, causal=True, scale=None) is None


def test_exp2_polynomial_is_fp32_accurate():
    """The kernel's 2^x (degree-6 polynomial): relative error <= 2.5e-7 over [-125, 0] (fp32 rounds at 6e-8)."""
    lib = native.load()
    assert lib is not None, native.native_status()
    x = torch.cat([torch.linspace(-125, 0, 200_001), -torch.rand(10_000) * 3])
    y = torch.empty_like(x)
    lib.attnlab_native_exp2(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()), ctypes.c_int64(x.numel()),
                            ctypes.c_int(1))
    exact = torch.exp2(x.double())
    assert ((y.double() - exact) / exact).abs().max() < 2.5e-7


def test_softmax_kernel_routes_fp32_to_the_native_kernel(monkeypatch):
    """Causal, full and packed fp32 attention go to the kernel (spied); masks, bias, dropout and bf16 don't."""
    calls = []
    real = documents_fp32.attend_documents_fp32_op

    def spy(*args):
        calls.append(args[4])  # causal
        return real(*args)

    monkeypatch.setattr(documents_fp32, "attend_documents_fp32_op", spy)
    attn = build_attention("softmax")
    q, k, v, _ = _packed([40], heads=4, kv_heads=2, head_dim=32)
    ref = _formula(q.double(), k.double(), v.double(), [[(0, 40)]], True)
    assert (attn(q, k, v, AttentionContext(causal=True)).double() - ref).abs().max() < 1e-5
    attn(q, k, v, AttentionContext(document_ids=torch.tensor([[0] * 25 + [1] * 15])))
    assert calls == [True, False]
    attn(q, k, v, AttentionContext(key_padding_mask=torch.ones(1, 40, dtype=torch.bool)))
    attn(q.bfloat16(), k.bfloat16(), v.bfloat16(), AttentionContext(causal=True))
    build_attention("softmax", dropout=0.1).train()(q, k, v, AttentionContext(causal=True))
    assert calls == [True, False]


def test_gpt_fp32_training_on_the_native_kernel_matches_pytorch():
    """An fp32 GPT step (GQA) runs attention on the native kernel, its loss and gradients equal the
    all-PyTorch step's to fp32 rounding, and a few AdamW steps lower the loss."""
    from attnlab.models import create_model

    torch.manual_seed(0)
    model = create_model("gpt", vocab_size=64, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=48,
                         attention="softmax", dropout=0.0)
    ids = torch.randint(0, 64, (3, 49))

    def loss_and_grads():
        model.zero_grad()
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    with torch.profiler.profile() as prof:
        loss, grads = loss_and_grads()
    ops = {e.name for e in prof.events()}
    assert {"attnlab::attend_documents_fp32", "attnlab::attend_documents_fp32_backward"} <= ops, sorted(ops)
    with native.disabled():
        loss_ref, grads_ref = loss_and_grads()
    assert abs(loss.item() - loss_ref.item()) < 1e-5
    for g, r in zip(grads, grads_ref):
        assert (g - r).abs().max() <= 1e-5 * r.abs().max() + 1e-7
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(15):
        step_loss, _ = loss_and_grads()
        opt.step()
    assert step_loss.item() < 0.8 * loss.item()


def test_operators_pass_torch_library_opcheck():
    """Schema, fake (meta) implementations, autograd registration and AOT dispatch of both operators, as
    torch.compile uses them (torch.library.opcheck)."""
    q, k, v, spans = _packed([9, 14], heads=4, kv_heads=2, head_dim=32, batch=2)
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    table = torch.tensor([(b, s, e - s) for b, row in enumerate(spans) for s, e in row], dtype=torch.int64)
    torch.library.opcheck(documents_fp32.attend_documents_fp32_op, (q, k, v, table, True, 0.2, True))
    out, lse = documents_fp32.attend_documents_fp32_op(q, k, v, table, True, 0.2, True)
    dout = torch.randn(out.shape)
    torch.library.opcheck(documents_fp32.attend_documents_fp32_backward_op,
                          (q.detach(), k.detach(), v.detach(), dout, lse.detach(), table, True, 0.2))


@pytest.mark.parametrize("causal", [True, False])
def test_double_backward_gives_the_formulas_second_derivatives(causal):
    """A gradient penalty (backward with create_graph=True) recomputes through a differentiable formula instead of
    failing in the backward operator, which has no derivative of its own."""
    q, k, v, spans = _packed([9, 14], heads=4, kv_heads=2, head_dim=32, batch=2)
    results = []
    for fn in (lambda q, k, v: documents_attention_fp32(q, k, v, spans, causal=causal, scale=None),
               lambda q, k, v: _formula(q, k, v, spans, causal)):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        grads = torch.autograd.grad(out.square().sum(), leaves, create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        results.append([out, *grads, *torch.autograd.grad(penalty, leaves)])
    assert "attend_documents_fp32" in type(
        documents_attention_fp32(*(t.detach().requires_grad_() for t in (q, k, v)), spans, causal=causal,
                                 scale=None).grad_fn).__name__
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5 * b.abs().max().item(), rtol=1e-4)
