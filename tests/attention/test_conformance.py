"""Conformance suite: every registered attention kernel against the attention contract (docs/design.md).

Parametrized over ``list_attention()``, so a kernel is checked as soon as it is registered. The checks
follow each kernel's declared :class:`~attnlab.attention.Capabilities`: causal cases only for causal
kernels, bidirectional only for bidirectional ones, a ``grid`` (T = rows * cols) for grid kernels,
padding / packed / bias only when declared, batch independence only when ``batch_independent``,
and equality with ``reference_attention`` under ``kernel.full_mask`` only for ``exact`` kernels.
Model-level checks (GPT / Encoder with each kernel) live in ``tests/models/test_attention_in_models.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.attention import (
    AttentionContext,
    CapabilityError,
    MultiHeadAttention,
    build_attention,
    list_attention,
    reference_attention,
)

# Options this suite passes instead of a kernel's defaults. Keep it tiny and explain every entry:
# defaults should already work at T = 16..40 (if they do not, fix the default rather than add here).
KERNEL_OPTIONS: dict[str, dict] = {
    # Swin windows must tile the grid: one 5x7 window over GRID, shifted by 2 so the 3x3 band mask is exercised
    # (several windows: tests/attention/test_window.py)
    "window": {"window_size": [5, 7], "shift": 2},
}

B, H, DH = 2, 4, 8
T1D = 21  # odd on purpose: not a multiple of the usual block / window / chunk sizes
GRID = (5, 7)  # rows != cols, so a transposed layout cannot pass; T = 35
ATOL, RTOL = 1e-5, 1e-4  # fp32 rounding


@functools.cache
def capabilities_of(name: str):
    """Capabilities of the kernel as this suite builds it (options may change them, e.g. per_sample)."""
    structural = dict(num_heads=H, num_kv_heads=H, head_dim=DH, max_seq_len=64)
    return build_attention(name, structural=structural, **KERNEL_OPTIONS.get(name, {})).capabilities


@dataclass(frozen=True)
class Case:
    """One way to call a kernel: its name, causal or not, and a 1-D sequence or a 2-D grid."""

    name: str
    causal: bool
    grid: tuple[int, int] | None

    @property
    def caps(self):
        return capabilities_of(self.name)

    @property
    def T(self) -> int:
        return self.grid[0] * self.grid[1] if self.grid else T1D

    def kernel(self, num_kv_heads: int = H, seed: int = 0):
        torch.manual_seed(seed)
        structural = dict(num_heads=H, num_kv_heads=num_kv_heads, head_dim=DH, max_seq_len=64)
        return build_attention(self.name, structural=structural, **KERNEL_OPTIONS.get(self.name, {}))

    def mha(self, num_kv_heads: int = H, seed: int = 0) -> MultiHeadAttention:
        torch.manual_seed(seed)
        return MultiHeadAttention(H * DH, H, num_kv_heads, kernel=self.name, max_seq_len=64,
                                  kernel_options=KERNEL_OPTIONS.get(self.name))

    def ctx(self, T: int | None = None, **kw) -> AttentionContext:
        T = self.T if T is None else T
        kw.setdefault("generator", torch.Generator().manual_seed(0))  # fresh per call: comparable runs
        return AttentionContext(causal=self.causal, grid=self.grid, positions=torch.arange(T), **kw)

    def qkv(self, batch: int = B, num_kv_heads: int = H, T: int | None = None, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        T = self.T if T is None else T
        q = torch.randn(batch, H, T, DH, generator=g)
        k = torch.randn(batch, num_kv_heads, T, DH, generator=g)
        v = torch.randn(batch, num_kv_heads, T, DH, generator=g)
        return q, k, v

    def call(self, q, k, v, train: bool = False, **ctx_kw):
        """A freshly built kernel (seed 0) on one call, so stateful kernels compare like for like."""
        kernel = self.kernel(num_kv_heads=k.shape[1]).train(train)
        return kernel(q, k, v, self.ctx(T=q.shape[2], **ctx_kw))


def _cases(exact_only: bool = False) -> list:
    out = []
    for name in list_attention():
        c = capabilities_of(name)
        if exact_only and not c.exact:
            continue
        modes = [m for m, ok in (("causal", c.causal), ("bidir", c.bidirectional)) if ok]
        layouts = ([] if c.requires_grid else ["1d"]) + (["2d"] if c.grid_2d or c.requires_grid else [])
        for m in modes:
            for lay in layouts:
                out.append(pytest.param(Case(name, m == "causal", GRID if lay == "2d" else None),
                                        id=f"{name}-{m}-{lay}"))
    return out


CASES = _cases()
EXACT_CASES = _cases(exact_only=True)


def perturb(x: torch.Tensor, where: torch.Tensor, seed: int = 7) -> torch.Tensor:
    """Replace tokens where ``where (B, T)`` is True (in every head) by fresh noise."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return torch.where(where[:, None, :, None], noise, x)


def pad_mask(T: int) -> torch.Tensor:
    """Row 0 right-padded (last 5 keys), row 1 left-padded (first 4 keys). True = real token."""
    kpm = torch.ones(B, T, dtype=torch.bool)
    kpm[0, T - 5:] = False
    kpm[1, :4] = False
    return kpm


def doc_ids(T: int) -> torch.Tensor:
    """Two packed documents per row, with different boundaries in the two rows."""
    ids = torch.zeros(B, T, dtype=torch.long)
    ids[0, 8:] = 1
    ids[1, T - 6:] = 1
    return ids


def test_registry_is_not_empty():
    assert "softmax" in list_attention()
    assert len(CASES) >= 2 and len(EXACT_CASES) >= 2


@pytest.mark.parametrize("case", CASES)
def test_shape_dtype_finite(case: Case):
    q, k, v = case.qkv()
    for train in (False, True):
        out = case.call(q, k, v, train=train)
        assert out.shape == (B, H, case.T, DH) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("case", CASES)
def test_gradient_reaches_every_parameter(case: Case):
    mha = case.mha().train()
    x = torch.randn(B, case.T, H * DH, requires_grad=True)
    w = torch.randn(B, case.T, H * DH)
    (mha(x, case.ctx()) * w).sum().backward()
    kernel_params = {f"kernel.{n}" for n, _ in mha.kernel.named_parameters()}
    for name, p in mha.named_parameters():
        assert p.grad is not None, f"{case.name}: no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"{case.name}: non-finite gradient in {name}"
        # q_proj / k_proj may legitimately get a zero gradient here (softmax is shift-invariant in the
        # key bias; stream-QK variants take q, k from elsewhere); tests/models checks them in a model
        if name in kernel_params or name.startswith(("v_proj", "out_proj")):
            assert p.grad.abs().sum() > 0, f"{case.name}: zero gradient for {name}"
    # every input token influences the output
    assert (x.grad.abs().sum(-1) > 0).all(), f"{case.name}: some tokens get no gradient"


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].causal])
def test_causal_future_does_not_leak(case: Case, train: bool):
    q, k, v = case.qkv()
    ref = case.call(q, k, v, train=train)
    T = case.T
    for t in (0, T // 3, T - 2):
        future = torch.zeros(B, T, dtype=torch.bool)
        future[:, t + 1:] = True
        out = case.call(perturb(q, future), perturb(k, future, 8), perturb(v, future, 9), train=train)
        torch.testing.assert_close(out[:, :, : t + 1], ref[:, :, : t + 1], atol=ATOL, rtol=RTOL,
                                   msg=lambda m: f"{case.name}: tokens > {t} changed outputs <= {t}\n{m}")
        assert not torch.allclose(out[:, :, t + 1:], ref[:, :, t + 1:]), "perturbation had no effect"


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].caps.key_padding_mask])
def test_padded_tokens_change_nothing_at_valid_positions(case: Case):
    q, k, v = case.qkv()
    kpm = pad_mask(case.T)
    ref = case.call(q, k, v, key_padding_mask=kpm)
    assert torch.isfinite(ref).all()
    pad = ~kpm
    out = case.call(perturb(q, pad), perturb(k, pad, 8), perturb(v, pad, 9), key_padding_mask=kpm)
    valid = kpm[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[valid], ref[valid], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].caps.packed])
def test_packed_documents_do_not_interact(case: Case):
    q, k, v = case.qkv()
    ids = doc_ids(case.T)
    if not getattr(case.caps, "batch_independent", True):
        # batch-pooled statistics couple the rows (declared), so check documents within one row
        q, k, v, ids = q[:1], k[:1], v[:1], ids[:1]
    ref = case.call(q, k, v, document_ids=ids)
    for doc in (0, 1):
        mine = ids == doc
        out = case.call(perturb(q, mine), perturb(k, mine, 8), perturb(v, mine, 9), document_ids=ids)
        other = (~mine)[:, None, :, None].expand_as(out)
        torch.testing.assert_close(out[other], ref[other], atol=ATOL, rtol=RTOL,
                                   msg=lambda m: f"{case.name}: document {doc} leaked into the other\n{m}")


@pytest.mark.parametrize("case", CASES)
def test_batch_rows_are_independent(case: Case):
    if not getattr(case.caps, "batch_independent", True):
        pytest.skip(f"{case.name} declares batch_independent=False (pools statistics over the batch)")
    q, k, v = case.qkv()
    kw = {"key_padding_mask": pad_mask(case.T)} if case.caps.key_padding_mask else {}
    both = case.call(q, k, v, **kw)
    kw1 = {key: m[1:] for key, m in kw.items()}
    alone = case.call(q[1:], k[1:], v[1:], **kw1)
    torch.testing.assert_close(alone, both[1:], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("case", CASES)
def test_bf16_autocast_forward_backward(case: Case):
    mha = case.mha().train()
    x = torch.randn(B, case.T, H * DH)
    with torch.no_grad():
        ref = mha.eval()(x, case.ctx())
    mha.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mha(x, case.ctx())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    y.float().square().mean().backward()
    for name, p in mha.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{case.name}: bad bf16 grad for {name}"
    if case.caps.exact:
        err = (y.float() - ref).abs().max().item()
        assert err < 2e-2 * (1 + ref.abs().max().item()), f"{case.name}: bf16 differs from fp32 by {err}"


@pytest.mark.parametrize("case", CASES)
def test_deterministic_under_fixed_seed(case: Case):
    x = torch.randn(B, case.T, H * DH)
    outs = []
    for _ in range(2):
        mha = case.mha(seed=3).train()  # same init seed, same ctx generator seed
        outs.append(mha(x, case.ctx()))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    mha = case.mha(seed=3).eval()
    torch.testing.assert_close(mha(x, case.ctx()), mha(x, case.ctx()), atol=0, rtol=0)


@pytest.mark.parametrize("num_kv_heads", [2, 1], ids=["gqa", "mqa"])
@pytest.mark.parametrize("case", CASES)
def test_grouped_kv_heads(case: Case, num_kv_heads: int):
    q, k, v = case.qkv(num_kv_heads=num_kv_heads)
    out = case.call(q, k, v, train=True)
    assert out.shape == (B, H, case.T, DH) and torch.isfinite(out).all()
    mha = case.mha(num_kv_heads=num_kv_heads)
    assert mha.k_proj.out_features == num_kv_heads * DH
    y = mha(torch.randn(B, case.T, H * DH), case.ctx())
    assert y.shape == (B, case.T, H * DH) and torch.isfinite(y).all()


@pytest.mark.parametrize("case", CASES)
def test_attention_maps_on_request(case: Case):
    """``return_weights`` works for every kernel: (B, H, T, T), finite, no weight on the future or on
    padding; exact kernels give exactly the reference weights under their own pattern."""
    mha = case.mha(num_kv_heads=2).eval()
    x = torch.randn(B, case.T, H * DH)
    kw = {"key_padding_mask": pad_mask(case.T)} if case.caps.key_padding_mask else {}
    y, w = mha(x, case.ctx(**kw), return_weights=True)
    assert w.shape == (B, H, case.T, case.T) and torch.isfinite(w).all()
    torch.testing.assert_close(y, mha(x, case.ctx(**kw)), atol=ATOL, rtol=RTOL)  # same output as without
    if case.causal:
        assert w.triu(1).abs().max() == 0, f"{case.name}: attention map puts weight on future keys"
    if kw:
        valid_q = kw["key_padding_mask"][:, None, :, None]  # (B, 1, T, 1)
        pad_k = ~kw["key_padding_mask"][:, None, None, :]  # (B, 1, 1, S)
        assert (w * (valid_q & pad_k)).abs().max() == 0, f"{case.name}: attention map weighs padded keys"
    if case.caps.exact:
        q, k, v = mha.project(x, None, case.ctx(**kw))
        ctx = case.ctx(**kw)
        _, ref = reference_attention(q, k, v, keep=mha.kernel.full_mask(case.T, case.T, ctx),
                                     bias=mha.kernel.full_bias(case.T, case.T, ctx), scale=mha.kernel.softmax_scale(DH))
        torch.testing.assert_close(w, ref, atol=ATOL, rtol=RTOL)


@st.composite
def _exact_setup(draw, case: Case):
    c = case.caps
    T = case.T if case.grid else draw(st.integers(1, 40))
    return dict(
        T=T,
        num_kv_heads=draw(st.sampled_from([H, 2, 1])),
        pad=c.key_padding_mask and draw(st.booleans()),
        docs=c.packed and draw(st.booleans()),
        bias=c.attn_bias and draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.mark.parametrize("case", EXACT_CASES)
def test_exact_kernel_equals_reference(case: Case):
    @settings(max_examples=15)
    @given(setup=_exact_setup(case))
    def check(setup):
        T, g = setup["T"], torch.Generator().manual_seed(setup["seed"])
        q, k, v = case.qkv(num_kv_heads=setup["num_kv_heads"], T=T, seed=setup["seed"])
        kw = {}
        if setup["pad"]:
            kw["key_padding_mask"] = torch.rand(B, T, generator=g) > 0.3
        if setup["docs"]:
            kw["document_ids"] = (torch.rand(B, T, generator=g) < 0.2).long().cumsum(-1)  # sorted ids
        if setup["bias"]:
            kw["attn_bias"] = torch.randn(1, H, T, T, generator=g)
        kernel = case.kernel(num_kv_heads=setup["num_kv_heads"]).eval()
        ctx = case.ctx(T=T, **kw)
        out = kernel(q, k, v, ctx)
        keep = kernel.full_mask(T, T, ctx)
        ref, _ = reference_attention(q, k, v, keep=keep, bias=kernel.full_bias(T, T, ctx), scale=kernel.softmax_scale(DH))
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)

    check()


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].grid is None])
@settings(max_examples=8)
@given(T=st.integers(1, 40), cut=st.floats(0, 1))
def test_any_length(case: Case, T: int, cut: float):
    q, k, v = case.qkv(T=T)
    out = case.call(q, k, v)
    assert out.shape == (B, H, T, DH) and torch.isfinite(out).all()
    if case.causal and T > 1:
        t = min(int(cut * (T - 1)), T - 2)
        future = torch.zeros(B, T, dtype=torch.bool)
        future[:, t + 1:] = True
        other = case.call(perturb(q, future), perturb(k, future, 8), perturb(v, future, 9))
        torch.testing.assert_close(other[:, :, : t + 1], out[:, :, : t + 1], atol=ATOL, rtol=RTOL)


_CAP_REQUESTS = {
    "causal": lambda T: dict(causal=True),
    "bidirectional": lambda T: dict(causal=False),
    "key_padding_mask": lambda T: dict(key_padding_mask=pad_mask(T)),
    "packed": lambda T: dict(document_ids=doc_ids(T)),
    "attn_bias": lambda T: dict(attn_bias=torch.zeros(1, H, T, T)),
    "cross_attention": lambda T: dict(causal=False, cross=True),
}


@pytest.mark.parametrize("name", list_attention())
def test_capabilities_are_honest(name: str):
    """Declared abilities run; undeclared ones raise CapabilityError (never a silent fallback)."""
    c = capabilities_of(name)
    grid = GRID if c.requires_grid else None
    base = Case(name, causal=c.causal, grid=grid)
    q, k, v = base.qkv()
    kernel = base.kernel().eval()
    for cap, request in _CAP_REQUESTS.items():
        kw = request(base.T)
        ctx = AttentionContext(**{"causal": base.causal, "grid": grid, "positions": torch.arange(base.T), **kw})
        if getattr(c, cap):
            assert torch.isfinite(kernel(q, k, v, ctx)).all()
        else:
            with pytest.raises(CapabilityError, match=cap):
                kernel(q, k, v, ctx)
    if c.requires_grid:
        with pytest.raises(CapabilityError, match="grid"):
            kernel(q, k, v, AttentionContext(causal=base.causal))


CROSS_NAMES = [n for n in list_attention() if capabilities_of(n).cross_attention]


@pytest.mark.parametrize("name", CROSS_NAMES)
def test_cross_attention_equals_reference(name: str):
    """Queries attend to a memory of another length, with the memory's padding and packed documents (each
    query sees only the memory of its own document; a query whose document has no memory outputs 0)."""

    @settings(max_examples=20)
    @given(T=st.integers(1, 20), S=st.integers(1, 30), num_kv_heads=st.sampled_from([H, 2, 1]),
           pad=st.booleans(), docs=st.booleans(), seed=st.integers(0, 2**16))
    def check(T, S, num_kv_heads, pad, docs, seed):
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(B, H, T, DH, generator=g)
        k, v = (torch.randn(B, num_kv_heads, S, DH, generator=g) for _ in range(2))
        kw = {}
        if pad:
            kw["key_padding_mask"] = torch.rand(B, S, generator=g) > 0.3
        if docs:
            kw["document_ids"] = (torch.rand(B, S, generator=g) < 0.2).long().cumsum(-1)
            kw["query_document_ids"] = (torch.rand(B, T, generator=g) < 0.2).long().cumsum(-1)
        ctx = AttentionContext(cross=True, **kw)
        kernel = Case(name, False, None).kernel(num_kv_heads=num_kv_heads).eval()
        out = kernel(q, k, v, ctx)
        keep = kernel.full_mask(T, S, ctx)
        ref, _ = reference_attention(q, k, v, keep=keep, scale=kernel.softmax_scale(DH))
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)

    check()
