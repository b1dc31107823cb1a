"""The native Swin window attention (``attnlab.native.window_fp32``): forward, q/k/v and bias-table gradients
against the dense reference formula under the kernel's window mask and bias, where it is taken and where not, bf16
tensors and their rounding, bad layouts, and the operators' registration for torch.compile."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.attention import AttentionContext, build_attention, reference_attention
from attnlab.attention.kernels import window as window_kernel
from attnlab import native
from attnlab.native import window_fp32
from native_cpu import family_runs

pytestmark = pytest.mark.skipif(not family_runs("attention_fp32"),
                                reason="the native fp32 kernels need x86-64 with AVX-512F and FMA, and gcc")


def _kernel(window, shift, heads, head_dim, tokens, relative_bias=True):
    kernel = build_attention("window", structural=dict(num_heads=heads, num_kv_heads=heads, head_dim=head_dim,
                                                       max_seq_len=tokens),
                             window_size=window, shift=shift, relative_bias=relative_bias)
    if kernel.rel_bias is not None:
        with torch.no_grad():
            kernel.rel_bias.normal_(0, 0.5)  # larger than the init, so a wrong bias shows
    return kernel


def _reference(kernel, q, k, v, ctx):
    """Dense softmax attention under the kernel's own pattern (mask and relative bias), heads expanded."""
    T = q.shape[2]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    bias = kernel.pattern_bias(T, T, ctx)
    out, _ = reference_attention(q, k, v, keep=kernel.pattern_mask(T, T, ctx), bias=bias,
                                 scale=q.shape[-1] ** -0.5)
    return out


class Spy:
    """Counts the native operator's calls (wraps ``window_fp32.attend_windows_fp32_op``)."""

    def __init__(self, monkeypatch):
        self.calls, op = 0, window_fp32.attend_windows_fp32_op

        def counted(*args):
            self.calls += 1
            return op(*args)
        monkeypatch.setattr(window_fp32, "attend_windows_fp32_op", counted)


@settings(max_examples=12, deadline=None)
@given(mh=st.integers(2, 5), mw=st.integers(2, 5), wr=st.integers(1, 3), wc=st.integers(1, 3),
       shift=st.integers(0, 4), heads=st.sampled_from([(2, 2), (4, 2), (3, 1)]), head_dim=st.sampled_from([16, 32, 48]),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_forward_and_gradients_equal_the_dense_formula(mh, mw, wr, wc, shift, heads, head_dim, bias, seed):
    shift = shift % min(mh, mw)
    H, Hkv = heads
    rows, cols = mh * wr, mw * wc
    T = rows * cols
    torch.manual_seed(seed)
    kernel = _kernel((mh, mw), shift, H, head_dim, T, bias)
    ctx = AttentionContext(grid=(rows, cols))
    q = torch.randn(2, H, T, head_dim, requires_grad=True)
    k, v = (torch.randn(2, Hkv, T, head_dim, requires_grad=True) for _ in range(2))
    out = kernel(q, k, v, ctx)
    assert type(out.grad_fn).__name__.startswith("GeneratedBackwardFor_attnlab_attend_windows_fp32")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, [q, k, v] + ([kernel.rel_bias] if bias else []), dout)
    ref = _reference(kernel, q, k, v, ctx)
    ref_grads = torch.autograd.grad(ref, [q, k, v] + ([kernel.rel_bias] if bias else []), dout)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=5e-5, rtol=1e-4)


def test_inference_takes_the_native_kernel_and_matches_the_pytorch_path(monkeypatch):
    torch.manual_seed(0)
    kernel = _kernel(4, 2, 3, 32, 96)
    ctx = AttentionContext(grid=(8, 12))
    q, k, v = (torch.randn(2, 3, 96, 32) for _ in range(3))
    spy = Spy(monkeypatch)
    with torch.inference_mode():
        native = kernel(q, k, v, ctx)
    with torch.no_grad():
        assert torch.equal(kernel(q, k, v, ctx), native)
    assert spy.calls == 2
    monkeypatch.setattr(window_kernel, "windows_attention_fp32", lambda *a: None)  # the batched-matmul path
    with torch.no_grad():
        torch.testing.assert_close(kernel(q, k, v, ctx), native, atol=2e-6, rtol=1e-5)
    assert spy.calls == 2


def test_bf16_inputs_are_computed_in_fp32_and_rounded_once(monkeypatch):
    """bf16 q, k, v (autocast) give bf16 outputs and gradients: the fp32 results of the same bf16 values, each
    rounded to bf16 (nearest even) once."""
    torch.manual_seed(1)
    kernel = _kernel(4, 2, 2, 32, 64)
    ctx = AttentionContext(grid=(8, 8))
    q, k, v = (torch.randn(2, 2, 64, 32).bfloat16().requires_grad_() for _ in range(3))
    spy = Spy(monkeypatch)
    out = kernel(q, k, v, ctx)
    assert spy.calls == 1 and out.dtype == torch.bfloat16
    dout = torch.randn(out.shape).bfloat16()
    grads = torch.autograd.grad(out, [q, k, v, kernel.rel_bias], dout)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = kernel(q32, k32, v32, ctx)  # the native fp32 path on the same values
    ref_grads = torch.autograd.grad(ref, [q32, k32, v32, kernel.rel_bias], dout.float())
    assert torch.equal(out, ref.bfloat16())
    for g, r in zip(grads[:3], ref_grads[:3]):
        assert g.dtype == torch.bfloat16 and torch.equal(g, r.bfloat16())
    torch.testing.assert_close(grads[3], ref_grads[3], atol=1e-6, rtol=1e-5)  # the fp32 table's gradient
    assert torch.equal(out[0, 0, 0].float(), ref[0, 0, 0].bfloat16().float())


def test_bf16_rounding_is_to_nearest_even_and_keeps_nan():
    """The kernel rounds its fp32 results to bf16 itself (AVX-512F integer arithmetic). Windows of two tokens with
    equal scores give the mean of their two values, exact in fp32 and often exactly halfway between two bf16
    numbers: the result must be PyTorch's rounding of that mean (to nearest, ties to even), NaN and inf kept."""
    g = torch.Generator().manual_seed(5)
    a = torch.randn(64, 16, generator=g).bfloat16()
    b = (a.float() * (1 + 2 ** -7 * torch.randint(-3, 4, (64, 16), generator=g))).bfloat16()  # near a: ties
    a[0, :4] = torch.tensor([float("nan"), float("inf"), 1.0, 1.0078125]).bfloat16()
    b[0, :4] = torch.tensor([1.0, 1.0, 1.0078125, 1.015625]).bfloat16()
    v = torch.stack([a, b], 1).reshape(1, 1, 128, 16)  # token 2i holds a[i], token 2i + 1 holds b[i]
    zero = torch.zeros_like(v)
    out = window_fp32.attend_windows_fp32_op(zero, zero, v, torch.arange(128), 2, None, 1.0, False)[0]
    mean = (a.float() + b.float()) / 2
    ties = ((mean.view(torch.int32) & 0xFFFF) == 0x8000).sum().item()
    assert ties > 50  # the case that tells round-half-even from round-half-up
    for got in (out[0, 0, 0::2], out[0, 0, 1::2]):
        assert torch.equal(got.isnan(), mean.isnan())
        assert torch.equal(got.nan_to_num(0.0), mean.bfloat16().nan_to_num(0.0))
    first = out[0, 0, 0, :4].float().tolist()  # NaN, inf, then 1 + 2^-8 -> 1 and 1 + 3 2^-8 -> 1 + 2^-6 (even)
    assert first[0] != first[0] and first[1:] == [float("inf"), 1.0, 1.015625]


@pytest.mark.parametrize("case", ["head_dim 8", "float64", "native off"])
def test_inputs_it_cannot_take_keep_the_pytorch_path(monkeypatch, case):
    head_dim, dtype = {"head_dim 8": (8, torch.float32), "float64": (32, torch.float64)}.get(case, (32, torch.float32))
    kernel = _kernel(4, 0, 2, head_dim, 64).to(dtype)
    ctx = AttentionContext(grid=(8, 8))
    q, k, v = (torch.randn(1, 2, 64, head_dim, dtype=dtype) for _ in range(3))
    spy = Spy(monkeypatch)
    with torch.no_grad(), (native.disabled() if case == "native off" else contextlib.nullcontext()):
        out = kernel(q, k, v, ctx)
    assert spy.calls == 0
    torch.testing.assert_close(out, _reference(kernel, q, k, v, ctx), atol=1e-5, rtol=1e-4)


def test_a_layout_the_kernel_would_misread_is_refused():
    q = torch.randn(1, 2, 16, 16)
    order = torch.randperm(16)
    with pytest.raises(ValueError, match="windows must tile the tokens"):
        window_fp32.windows_attention_fp32(q, q, q, order, 5, None, 0.25)
    with pytest.raises(ValueError, match="windows must tile the tokens"):
        window_fp32.windows_attention_fp32(q, q, q, order[:8], 4, None, 0.25)
    with pytest.raises(ValueError, match=r"bias of shape \(2, 3, 4, 4\), expected \(2 or 1, 4 or 1, 4, 4\)"):
        window_fp32.windows_attention_fp32(q, q, q, order, 4, torch.zeros(2, 3, 4, 4), 0.25)


def test_operators_pass_torch_library_opcheck():
    """Schema, fake implementations, autograd registration and AOT dispatch, as torch.compile uses them."""
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 2, 32, 16, requires_grad=True) for _ in range(3))
    order = torch.randperm(32)
    bias = torch.randn(2, 2, 16, 16, requires_grad=True)
    torch.library.opcheck(window_fp32.attend_windows_fp32_op, (q, k, v, order, 16, bias, 0.25, True))
    out, lse = window_fp32.attend_windows_fp32_op(q, k, v, order, 16, bias, 0.25, True)
    torch.library.opcheck(window_fp32.attend_windows_fp32_backward_op,
                          (q.detach(), k.detach(), v.detach(), torch.randn(out.shape), lse.detach(), order, 16,
                           bias.detach(), 0.25, True))


def test_double_backward_gives_the_pytorch_paths_second_derivatives(monkeypatch):
    """A gradient penalty (backward with create_graph=True) recomputes through the differentiable formula."""
    kernel = _kernel(4, 2, 2, 16, 64)
    ctx = AttentionContext(grid=(8, 8))
    results = []
    for native in (True, False):
        if not native:
            monkeypatch.setattr(window_kernel, "windows_attention_fp32", lambda *a: None)
        torch.manual_seed(1)
        q, k = (torch.randn(2, 2, 64, 16, requires_grad=True) for _ in range(2))
        out = kernel(q, k, k, ctx)
        assert ("attend_windows" in type(out.grad_fn).__name__) == native
        grads = torch.autograd.grad(out.square().sum(), [q, kernel.rel_bias], create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        results.append([out, *grads, *torch.autograd.grad(penalty, [q, k, kernel.rel_bias])])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6 * b.abs().max().item(), rtol=1e-5)


@pytest.mark.parametrize("gqa", [False, True])
def test_bf16_training_over_whole_rows_without_amx_runs_on_the_window_kernel(monkeypatch, gqa):
    """Where the trainable bf16 kernel cannot run (no AMX: simulated here, so every machine checks the same
    route), bidirectional bf16 training over whole rows (a ViT's attention) goes to the window kernel as one
    window of every token: values and gradients equal the fp32 kernel's on the same bf16 inputs, rounded once,
    and causal or packed inputs are left to PyTorch."""
    from attnlab.native import attention as native_attention

    spy = Spy(monkeypatch)
    monkeypatch.setattr(native_attention, "trainable_documents_attention_bf16", lambda *a, **k: None)
    torch.manual_seed(0)
    B, H, T, D = 2, 4, 37, 32
    q = torch.randn(B, H, T, D).bfloat16()
    k, v = (torch.randn(B, H // 2 if gqa else H, T, D).bfloat16() for _ in range(2))
    dout = torch.randn(B, H, T, D).bfloat16()

    def run(attend, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        out = attend(*leaves)
        out.backward(dout.to(dtype))
        return [out, *(t.grad for t in leaves)]

    got = run(lambda *t: native_attention.documents_attention(*t, None, causal=False, scale=None), torch.bfloat16)
    assert spy.calls == 1
    fp32 = run(lambda *t: window_fp32.windows_attention_fp32(*t, torch.arange(T), T, None, D ** -0.5), torch.float32)
    for i, (g, r) in enumerate(zip(got, fp32, strict=True)):
        assert g.dtype == torch.bfloat16
        if gqa and i >= 2:  # dk, dv: per query head in bf16, then summed over each group (a rounding more)
            torch.testing.assert_close(g.float(), r, atol=2e-2, rtol=2e-2)
        else:
            assert torch.equal(g, r.bfloat16())
    reference = reference_attention(*(t.float().repeat_interleave(H // t.shape[1], 1) for t in (q, k, v)),
                                    scale=D ** -0.5)[0]
    torch.testing.assert_close(got[0].float(), reference, atol=1e-2, rtol=1e-2)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    assert native_attention.documents_attention(*leaves, None, causal=True, scale=None) is None
    packed = [[(0, 20), (20, T)]] * B
    assert native_attention.documents_attention(*leaves, packed, causal=False, scale=None) is None
    assert spy.calls == 2  # the one above and the fp32 comparison
