"""The native bf16 per-document attention kernel (attnlab/native): exact softmax attention per document,
checked against the float32 formula on the same bf16 inputs, on both instruction paths (AMX, AVX-512)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from attnlab import native
from attnlab.attention import AttentionContext, build_attention
from attnlab.native.documents import documents_attention_bf16, usable
from native_cpu import HAS_AMX, needs_native

PATHS = [pytest.param(True, id="amx"), pytest.param(False, id="avx512")]


def _packed(lengths, heads=4, kv_heads=4, head_dim=32, batch=1, seed=0):
    """q (B, H, T, Dh), k, v (B, Hkv, T, Dh): bf16 strided views of one fused projection, as the shell
    makes them; spans: the documents of every row."""
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    qkv = (torch.randn(batch, T, (heads + 2 * kv_heads) * head_dim, generator=g) * 1.5).to(torch.bfloat16)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = q.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # (B, H, T, Dh)
    k = k.unflatten(-1, (kv_heads, head_dim)).transpose(1, 2)
    v = v.unflatten(-1, (kv_heads, head_dim)).transpose(1, 2)
    ends = torch.tensor(lengths).cumsum(0).tolist()
    spans = [list(zip([0] + ends[:-1], ends))] * batch
    return q, k, v, spans


def _reference(q, k, v, spans, causal):
    """float32 softmax attention per document on the same bf16 values (heads expanded by repeat_interleave)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1).float(), v.repeat_interleave(group, 1).float()
    out = torch.zeros(q.shape)
    for b, row in enumerate(spans):
        for s, e in row:
            out[b, :, s:e] = F.scaled_dot_product_attention(q[b:b + 1, :, s:e].float(), k[b:b + 1, :, s:e],
                                                            v[b:b + 1, :, s:e], is_causal=causal)[0]
    return out


def _run(q, k, v, spans, causal, amx):
    with torch.inference_mode():
        out = documents_attention_bf16(q, k, v, spans, causal=causal, scale=None, amx=amx)
    assert out is not None, native.native_status()
    return out


@needs_native
def test_the_kernel_builds_and_loads_on_this_machine():
    """On an x86-64 CPU with AVX-512 BF16 and gcc the kernel must be there: a broken build fails here
    instead of silently falling back to PyTorch."""
    assert native.native_status().startswith("available"), native.native_status()
    assert native.load().amx == HAS_AMX


@needs_native
@pytest.mark.parametrize("amx", PATHS)
@given(lengths=st.lists(st.integers(1, 90), min_size=1, max_size=5), causal=st.booleans(),
       head_dim=st.sampled_from([32, 64, 96]), gqa=st.sampled_from([(4, 4), (4, 2), (3, 1)]), batch=st.integers(1, 2))
def test_matches_float32_attention_per_document(amx, lengths, causal, head_dim, gqa, batch):
    """Against the float32 formula on the same bf16 inputs: error of the order of bf16 rounding of the
    output (2^-8 relative) and of P (the same as PyTorch's bf16 SDPA makes)."""
    q, k, v, spans = _packed(lengths, *gqa, head_dim=head_dim, batch=batch)
    out = _run(q, k, v, spans, causal, amx)
    ref = _reference(q, k, v, spans, causal)
    err = (out.float() - ref).abs()
    assert err.max() <= 0.02 * ref.abs().max() + 1e-3, float(err.max())
    assert err.mean() <= 3e-3 * ref.abs().mean() + 2e-3, float(err.mean())
    with torch.inference_mode():  # PyTorch's own bf16 kernel on the same inputs errs about as much
        group = q.shape[1] // k.shape[1]
        sdpa = [F.scaled_dot_product_attention(q[b:b + 1, :, s:e], k[b:b + 1, :, s:e].repeat_interleave(group, 1),
                                               v[b:b + 1, :, s:e].repeat_interleave(group, 1), is_causal=causal)
                for b, row in enumerate(spans) for s, e in row]
    sdpa_err = max(float((o.float() - ref[b:b + 1, :, s:e]).abs().max())
                   for o, (b, (s, e)) in zip(sdpa, [(b, se) for b, row in enumerate(spans) for se in row]))
    assert err.max() <= 2 * sdpa_err + 2e-3


@needs_native
@pytest.mark.parametrize("amx", PATHS)
def test_negative_scale_and_spans_that_do_not_tile_the_row(amx):
    """A negative score scale (the softmax's max is taken over the scaled scores) matches the formula, in
    the forward and (AMX) the backward; spans that leave a gap or run past the row are refused."""
    q, k, v, spans = _packed([45, 19], head_dim=64)

    def formula(q_):  # float32 causal softmax attention per document (PyTorch's CPU SDPA gives NaN here)
        parts = []
        for s, e in spans[0]:
            scores = q_[:, :, s:e] @ k[:, :, s:e].float().transpose(-1, -2) * -0.15
            scores = scores.masked_fill(torch.ones(e - s, e - s, dtype=torch.bool).triu(1), float("-inf"))
            parts.append(scores.softmax(-1) @ v[:, :, s:e].float())
        return torch.cat(parts, dim=2)

    out = documents_attention_bf16(q, k, v, spans, causal=True, scale=-0.15, amx=amx)
    ref = formula(q.float())
    assert out is not None and (out.float() - ref).abs().max() < 0.02 * ref.abs().max() + 1e-3
    if amx and HAS_AMX:
        from attnlab.native.documents import trainable_documents_attention_bf16

        leaf = q.detach().requires_grad_()
        trainable_documents_attention_bf16(leaf, k, v, spans, causal=True, scale=-0.15).float().sum().backward()
        exact = q.detach().float().requires_grad_()
        formula(exact).sum().backward()
        assert (leaf.grad.float() - exact.grad).abs().max() < 0.03 * exact.grad.abs().max() + 1e-3
    for bad in ([[(0, 40), (41, 64)]], [[(0, 64), (64, 200)]]):
        with pytest.raises(ValueError, match="spans"):
            documents_attention_bf16(q, k, v, bad, causal=True, scale=None, amx=amx)


@needs_native
def test_head_dim_16_and_48_use_the_avx512_path():
    """AMX needs head_dim % 32 == 0; other multiples of 16 run on AVX-512 even when AMX is asked for."""
    for head_dim in (16, 48):
        q, k, v, spans = _packed([7, 33, 2], head_dim=head_dim)
        out = _run(q, k, v, spans, causal=False, amx=True)
        assert torch.equal(out, _run(q, k, v, spans, causal=False, amx=False))
        assert (out.float() - _reference(q, k, v, spans, False)).abs().max() < 0.03


@needs_native
@pytest.mark.parametrize("amx", PATHS)
def test_documents_and_future_tokens_do_not_leak(amx):
    """Changing document 2 leaves documents 1 and 3 bit-identical; causal: changing token t + 1 leaves
    outputs <= t bit-identical (masked keys get exact zero probability)."""
    lengths = [37, 21, 50]
    q, k, v, spans = _packed(lengths)
    base = _run(q, k, v, spans, causal=True, amx=amx)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 37:58] += 3.0
    v2[:, :, 37:58] -= 2.0
    changed = _run(q, k2, v2, spans, causal=True, amx=amx)
    assert torch.equal(base[:, :, :37], changed[:, :, :37]) and torch.equal(base[:, :, 58:], changed[:, :, 58:])
    assert not torch.equal(base[:, :, 37:58], changed[:, :, 37:58])
    t = 70  # inside document 3 (58..107)
    k3, v3 = k.clone(), v.clone()
    k3[:, :, t + 1:] += 5.0
    v3[:, :, t + 1:] += 5.0
    later = _run(q, k3, v3, spans, causal=True, amx=amx)
    assert torch.equal(base[:, :, :t + 1], later[:, :, :t + 1])


@needs_native
@pytest.mark.parametrize("amx", PATHS)
def test_grouped_kv_heads_equal_expanded_heads_and_threads_do_not_change_results(amx):
    q, k, v, spans = _packed([40, 3, 64, 17], heads=6, kv_heads=2, batch=2)
    grouped = _run(q, k, v, spans, causal=False, amx=amx)
    expanded = _run(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), spans, causal=False, amx=amx)
    assert torch.equal(grouped, expanded)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # work items split over two threads
        assert torch.equal(_run(q, k, v, spans, causal=False, amx=amx), grouped)
    finally:
        torch.set_num_threads(threads)


@needs_native
def test_tile_state_of_other_amx_users_survives():
    """PyTorch's bf16 flash attention and matmuls (oneDNN / brgemm, which cache their AMX tile
    configuration per thread) stay correct when interleaved with the native kernel in one thread."""
    q, k, v, spans = _packed([80, 45], heads=4)
    a, b = torch.randn(64, 96).to(torch.bfloat16), torch.randn(96, 48).to(torch.bfloat16)
    with torch.inference_mode():
        flash_before = F.scaled_dot_product_attention(q, k, v)
        mm_before = a @ b
        for _ in range(3):
            _run(q, k, v, spans, causal=False, amx=True)
            assert torch.equal(F.scaled_dot_product_attention(q, k, v), flash_before)
            assert torch.equal(a @ b, mm_before)


@needs_native
def test_softmax_kernel_uses_it_for_packed_bf16_inference_only():
    """The softmax kernel takes the native path for packed bf16 inference (same result as calling it
    directly) and PyTorch's otherwise: with gradients, in float32, with dropout in training."""
    q, k, v, spans = _packed([30, 50])
    doc_ids = torch.tensor([[0] * 30 + [1] * 50])
    kernel = build_attention("softmax")
    ctx = AttentionContext(document_ids=doc_ids)
    with torch.inference_mode():
        assert torch.equal(kernel(q, k, v, ctx), _run(q, k, v, spans, causal=False, amx=None))
    qg = q.detach().clone().requires_grad_()
    assert not usable(qg, k, v) and usable(q, k, v)
    out = kernel(qg, k, v, ctx)
    out.float().sum().backward()  # PyTorch path: differentiable
    assert qg.grad is not None and (out.float() - _reference(q, k, v, spans, False)).abs().max() < 0.03
    assert not usable(q.float(), k.float(), v.float())
    q8 = torch.randn(1, 2, 5, 8).to(torch.bfloat16)
    assert not usable(q8, q8, q8)  # head_dim 8: not a multiple of 16


def _status_in_subprocess(env: dict) -> str:
    code = "from attnlab import native; print(native.native_status())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env},
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_disabled_by_environment():
    assert _status_in_subprocess({"ATTNLAB_NATIVE": "0"}) == "disabled by ATTNLAB_NATIVE=0"


@needs_native
def test_missing_compiler_and_damaged_cache_are_handled(tmp_path):
    """No compiler: a clear status and the PyTorch path. A damaged cached library is rebuilt."""
    missing = _status_in_subprocess({"CC": str(tmp_path / "no-such-cc"), "ATTNLAB_CACHE": str(tmp_path / "a")})
    assert missing.startswith("compiling the native kernels"), missing
    cache = tmp_path / "b"
    assert _status_in_subprocess({"ATTNLAB_CACHE": str(cache)}).startswith("available")
    (built,) = (cache / "native").glob("attention_bf16-*.so")
    built.write_bytes(b"not a shared library")
    assert _status_in_subprocess({"ATTNLAB_CACHE": str(cache)}).startswith("available")
    assert built.read_bytes()[:4] == b"\x7fELF"


@needs_native
def test_exp2_polynomial_is_accurate_to_a_few_ulp():
    """The softmax's 2^x (x <= 0): relative error <= 4e-6 against float64 (far below bf16's 3.9e-3
    rounding of the probabilities), exactly 1 at 0, and 2^-125 at the clamp (no slow denormals)."""
    import ctypes

    lib = native.load()
    x = torch.cat([torch.linspace(-30.0, 0.0, 100_003), torch.tensor([0.0, -0.5, -1.0, -124.9, -1e4])])
    y = torch.empty_like(x)
    lib.attnlab_native_exp2(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()), ctypes.c_int64(x.numel()),
                            ctypes.c_int(0))
    want = torch.exp2(x.double().clamp(min=-125))
    rel = ((y.double() - want) / want).abs()
    assert rel.max() <= 4e-6, float(rel.max())
    assert y[-5] == 1.0 and y[-1] == 2.0 ** -125


@needs_native
def test_switching_off_at_run_time_gives_the_pytorch_path():
    q, k, v, spans = _packed([30, 50])
    with native.disabled():
        assert documents_attention_bf16(q, k, v, spans, causal=False, scale=None) is None
        assert native.native_status().startswith("switched off")
    assert documents_attention_bf16(q, k, v, spans, causal=False, scale=None) is not None


@needs_native
def test_long_documents_on_amx_and_the_length_limits():
    """A 700-token causal document (44 query tiles, 22 key chunks) matches the formula; documents longer
    than a path's limit are left to PyTorch (``None``), and the softmax kernel still gives the result."""
    from attnlab.native.documents import MAX_DOC_LEN

    q, k, v, spans = _packed([700, 5], heads=2, kv_heads=2, head_dim=64)
    if native.load().amx:
        out = _run(q, k, v, spans, causal=True, amx=True)
        assert (out.float() - _reference(q, k, v, spans, True)).abs().max() < 0.03
    over = MAX_DOC_LEN["avx512"] + 1
    q, k, v, spans = _packed([over, 3])
    with torch.inference_mode():
        assert documents_attention_bf16(q, k, v, spans, causal=False, scale=None, amx=False) is None
        doc_ids = torch.tensor([[0] * over + [1] * 3])
        got = build_attention("softmax")(q, k, v, AttentionContext(document_ids=doc_ids))
    assert (got.float() - _reference(q, k, v, spans, False)).abs().max() < 0.03


needs_amx = pytest.mark.skipif(not HAS_AMX,
                               reason="the differentiable native kernel needs AMX-BF16")


def _grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return out, q.grad, k.grad, v.grad


@needs_amx
@given(lengths=st.lists(st.integers(1, 80), min_size=1, max_size=4), causal=st.booleans(),
       head_dim=st.sampled_from([32, 64]), gqa=st.sampled_from([(4, 4), (4, 2), (2, 1)]))
def test_trainable_kernel_gradients_match_float32_as_closely_as_sdpa(lengths, causal, head_dim, gqa):
    """Output and q/k/v gradients against float32 autograd of the formula on the same bf16 inputs: within
    twice the error PyTorch's bf16 SDPA makes on the same problem (plus a bf16 ulp)."""
    from attnlab.native.documents import trainable_documents_attention_bf16

    q, k, v, spans = _packed(lengths, *gqa, head_dim=head_dim, batch=2)
    dout = torch.randn(q.shape).to(torch.bfloat16)
    native_ = _grads(lambda a, b, c: trainable_documents_attention_bf16(a, b, c, spans, causal=causal, scale=None),
                     q, k, v, dout)
    exact = _grads(lambda a, b, c: _reference_differentiable(a.float(), b.float(), c.float(), spans, causal),
                   q, k, v, dout.float())
    sdpa = _grads(lambda a, b, c: _reference_differentiable(a, b, c, spans, causal), q, k, v, dout)
    for name, n, e, s in zip(("out", "dq", "dk", "dv"), native_, exact, sdpa):
        err, sdpa_err = (n.float() - e).abs().max(), (s.float() - e).abs().max()
        assert err <= 2 * sdpa_err + 0.01 * e.abs().max() + 1e-3, (name, float(err), float(sdpa_err))


def _reference_differentiable(q, k, v, spans, causal):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    rows = []
    for b, row in enumerate(spans):
        rows.append(torch.cat([F.scaled_dot_product_attention(q[b:b + 1, :, s:e], k[b:b + 1, :, s:e],
                                                              v[b:b + 1, :, s:e], is_causal=causal)
                               for s, e in row], dim=2))
    return torch.cat(rows)


@needs_amx
def test_trainable_kernel_refuses_double_backward_and_unfit_inputs():
    from attnlab.native.documents import trainable_documents_attention_bf16

    q, k, v, spans = _packed([20, 12], head_dim=32)
    q = q.detach().requires_grad_()
    out = trainable_documents_attention_bf16(q, k, v, spans, causal=True, scale=None)
    (g,) = torch.autograd.grad(out.float().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError):
        g.float().sum().backward()
    q48, k48, v48, spans48 = _packed([9], head_dim=48)  # AMX needs head_dim % 32 == 0
    assert trainable_documents_attention_bf16(q48, k48, v48, spans48, causal=True, scale=None) is None


@needs_amx
def test_gpt_bf16_training_takes_the_native_path_and_matches_pytorch():
    """A bf16-autocast GPT step runs attention, the pre-norms and the MLP's bias + GELU on the native kernels
    (spied), and its loss and gradients equal the all-PyTorch step's within bf16 noise; a few steps lower
    the loss."""
    from attnlab.models import create_model
    from attnlab.native import documents as native_docs
    from attnlab.native import pointwise

    torch.manual_seed(0)
    model = create_model("gpt", vocab_size=64, dim=64, num_layers=2, num_heads=2, max_seq_len=48, attention="softmax",
                         dropout=0.0)
    ids = torch.randint(0, 64, (3, 49))

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    calls = {"attention": 0, "layer_norm": 0, "bias_gelu": 0}  # the fused LayerNorm / GELU kernels too
    spied = [(native_docs, "attend_documents_op", "attention"), (pointwise, "layer_norm_op", "layer_norm"),
             (pointwise, "bias_gelu_op", "bias_gelu")]
    originals = [getattr(module, name) for module, name, _ in spied]
    for (module, name, key), original in zip(spied, originals):
        setattr(module, name, lambda *a, _f=original, _k=key: calls.__setitem__(_k, calls[_k] + 1) or _f(*a))
    try:
        loss, grads = loss_and_grads()
    finally:
        for (module, name, _), original in zip(spied, originals):
            setattr(module, name, original)
    assert calls == {"attention": 2, "layer_norm": 4, "bias_gelu": 2}  # per layer: 1, 2 pre-norms (not the final), 1
    with native.disabled():
        loss_ref, grads_ref = loss_and_grads()
    assert abs(loss - loss_ref) < 0.01
    for g, r in zip(grads, grads_ref):
        assert (g - r).norm() <= 0.05 * r.norm() + 1e-4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = loss
    for _ in range(15):
        loss, _ = loss_and_grads()
        opt.step()
    assert loss < first - 0.3


@needs_amx
def test_torch_compile_runs_the_kernel_as_an_operator():
    """Under torch.compile the kernels are opaque operators (torch.library): a compiled bf16 GPT step (GQA,
    packed documents) runs them (spied on the compiled path's calls) and gives the eager loss and gradients.
    Regression: dynamo used to trace into the ctypes call and the step crashed with a segfault."""
    from attnlab.models import create_model

    torch.manual_seed(0)
    model = create_model("gpt", vocab_size=64, dim=64, num_layers=2, num_heads=2, num_kv_heads=1, max_seq_len=32,
                         attention="softmax", dropout=0.0)
    ids = torch.randint(0, 64, (2, 33))
    docs = torch.tensor([[0] * 10 + [1] * 22, [0] * 32])

    def loss_and_grads(m):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = m(ids[:, :-1], document_ids=docs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss_ref, grads_ref = loss_and_grads(model)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(suppress_errors=False):
        compiled = torch.compile(model)
        prof_ops = []
        with torch.profiler.profile() as prof:
            loss, grads = loss_and_grads(compiled)
        prof_ops = {e.name for e in prof.events()}
    torch._dynamo.reset()
    assert "attnlab::attend_documents_bf16" in prof_ops and "attnlab::attend_documents_bf16_backward" in prof_ops
    assert abs(loss - loss_ref) < 0.01
    for g, r in zip(grads, grads_ref):
        assert (g - r).norm() <= 0.02 * r.norm() + 1e-4
