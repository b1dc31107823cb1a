"""PGQA: perturbed slices have mean exactly 0, switching the noise off gives GQA,
seeded noise, the diagonal zeros of U, causal token statistics."""

import pytest
import torch

from attnlab.attention import AttentionContext, build_attention, reference_attention
from attnlab.attention.capabilities import CapabilityError
from attnlab.attention.masks import causal_mask
from attnlab.attention.kernels.pgqa import group_noise


def qkv(B=2, H=4, G=2, T=10, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, D, generator=g), torch.randn(B, G, T, D, generator=g),
            torch.randn(B, G, T, D, generator=g))


def test_perturbed_slices_have_zero_mean():
    q, k, v = qkv()
    out = build_attention("pgqa")(q, k, v, AttentionContext(generator=torch.Generator().manual_seed(0)))
    means = out.flatten(2).mean(-1)  # (B, H): mean over T*Dh of every (b, head) slice
    assert means.abs().max() < 1e-5
    gqa, _ = reference_attention(q, k, v)
    assert gqa.flatten(2).mean(-1).abs().max() > 1e-3  # the GQA output itself is not centred
    assert (out - gqa).abs().max() > 0.1


def test_no_perturbation_equals_gqa():
    q, k, v = qkv()
    for kern in (build_attention("pgqa", perturb=False), build_attention("pgqa", apply_in_eval=False).eval()):
        for causal in (False, True):
            out = kern(q, k, v, AttentionContext(causal=causal))
            ref, _ = reference_attention(q, k, v, keep=causal_mask(10, 10) if causal else None)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_noise_is_seeded_and_fresh_per_call():
    q, k, v = qkv()
    kern = build_attention("pgqa")
    a = kern(q, k, v, AttentionContext(generator=torch.Generator().manual_seed(3)))
    b = kern(q, k, v, AttentionContext(generator=torch.Generator().manual_seed(3)))
    c = kern(q, k, v, AttentionContext(generator=torch.Generator().manual_seed(4)))
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-3
    own1, own2 = build_attention("pgqa", seed=5), build_attention("pgqa", seed=5)
    torch.testing.assert_close(own1(q, k, v), own2(q, k, v))
    assert (own1(q, k, v) - own2(q, k, v)).abs().max() == 0  # both advanced once more, in step


def test_noise_rows_standardised_with_zero_diagonal():
    u = group_noise(3, 40, (), torch.Generator().manual_seed(0), "cpu", torch.float32)
    torch.testing.assert_close(u.mean(-1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(u.std(-1), torch.ones(3))
    raw = torch.rand((3, 40), generator=torch.Generator().manual_seed(0))
    raw[torch.arange(3), torch.arange(3)] = 0.0
    expected = (raw - raw.mean(-1, keepdim=True)) / raw.std(-1, keepdim=True)  # the zeroed entries, standardised
    torch.testing.assert_close(u, expected)


def test_token_statistics_are_causal():
    q, k, v = qkv()
    kern = build_attention("pgqa")  # auto -> token statistics when causal
    ctx = lambda: AttentionContext(causal=True, generator=torch.Generator().manual_seed(1))
    out = kern(q, k, v, ctx())
    assert out.mean(-1).abs().max() < 1e-5  # each (b, head, t) slice centred over Dh
    v2 = v.clone()
    v2[:, :, 6:] += 3.0
    torch.testing.assert_close(kern(q, k, v2, ctx())[:, :, :6], out[:, :, :6])


def test_row_statistics_refuse_packed_documents():
    q, k, v = qkv()
    docs = torch.zeros(2, 10, dtype=torch.long)
    docs[:, 5:] = 1
    with pytest.raises(CapabilityError):
        build_attention("pgqa")(q, k, v, AttentionContext(document_ids=docs))
    out = build_attention("pgqa", stats="token")(q, k, v, AttentionContext(document_ids=docs))
    assert torch.isfinite(out).all()


def test_explicit_row_statistics_are_declared_non_causal():
    q, k, v = qkv()
    with pytest.raises(CapabilityError, match="causal"):
        build_attention("pgqa", stats="row")(q, k, v, AttentionContext(causal=True))
    assert build_attention("pgqa", stats="token").capabilities.packed
