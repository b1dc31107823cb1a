"""Deconstructing Attention's controlled variants and the per-layer schedule."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import AttentionContext, build_attention
from attnlab.attention.kernels.deconstructing import non_approximate_recurrent, taylor_recurrent
from attnlab.models.registry import create_model

VARIANTS = ["mlp_mixing", "approximate", "non_approximate", "random_qk", "fixed_seq_qk", "static_emb_qk"]


def qkv(B=2, H=4, T=12, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, T, D, generator=g), torch.randn(B, H, T, D, generator=g), torch.randn(B, H, T, D, generator=g)


def model(schedule, seed=0, **kw):
    torch.manual_seed(seed)
    return create_model("gpt-tiny", num_layers=len(schedule), attention=schedule, max_seq_len=32, **kw)


@pytest.mark.parametrize("name", ["random_qk", "fixed_seq_qk"])
def test_stream_maps_are_input_independent(name):
    m = model(["softmax", name, "softmax", name]).eval()
    a, b = torch.randint(0, 256, (2, 20)), torch.randint(0, 256, (2, 20))
    ma, mb = m.attention_maps(a), m.attention_maps(b)
    for layer in (1, 3):
        assert ma[layer].shape == (2, 4, 20, 20)
        torch.testing.assert_close(ma[layer], mb[layer])
        torch.testing.assert_close(ma[layer][0], ma[layer][1])
    assert (ma[0] - mb[0]).abs().max() > 1e-3  # the standard layers do depend on the input
    assert (m(a) - m(b)).abs().max() > 1e-3  # values still carry the input


def test_random_stream_runs_through_the_stack():
    m = model(["softmax", "random_qk"]).eval()
    ids = torch.randint(0, 256, (1, 16))
    before = m.attention_maps(ids)[1]
    with torch.no_grad():
        for p in m.blocks[0].parameters():
            p.add_(0.3 * torch.randn_like(p))
    after = m.attention_maps(ids)[1]
    assert (before - after).abs().max() > 1e-4  # layer-1 Q/K come from the stream after block 0


def test_static_embedding_maps_ignore_upstream_layers():
    m = model(["softmax", "static_emb_qk", "static_emb_qk"]).eval()
    ids = torch.randint(0, 256, (2, 16))
    before = m.attention_maps(ids)
    with torch.no_grad():
        for p in m.blocks[0].parameters():
            p.add_(0.3 * torch.randn_like(p))
    after = m.attention_maps(ids)
    for layer in (1, 2):
        torch.testing.assert_close(after[layer], before[layer])
    assert (after[0] - before[0]).abs().max() > 1e-4
    # identical across layers up to the per-layer W_Q, W_K: copy layer 1's into layer 2
    with torch.no_grad():
        for n in ("q_proj", "k_proj"):
            getattr(m.blocks[2].attn, n).load_state_dict(getattr(m.blocks[1].attn, n).state_dict())
    maps = m.attention_maps(ids)
    torch.testing.assert_close(maps[2], maps[1])
    # and equal softmax(LN(e) W_Q (LN(e) W_K)^T / sqrt(Dh)) over the token+position embeddings
    attn = m.blocks[1].attn
    e = F.layer_norm(m.embed(ids, torch.arange(16)), (64,))
    q = attn.q_proj(e).view(2, 16, 4, 16).transpose(1, 2)
    k = attn.k_proj(e).view(2, 16, 4, 16).transpose(1, 2)
    s = (q @ k.transpose(-1, -2)) / 4.0
    s = s.masked_fill(~torch.ones(16, 16, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(maps[1], s.softmax(-1), atol=1e-5, rtol=1e-4)


def test_static_embedding_decoding_matches_full_forward():
    m = model(["static_emb_qk", "softmax"]).eval()
    ids = torch.randint(0, 256, (1, 12))
    full = m(ids)
    cache = m.new_cache(1, 32)
    step = torch.cat([m(ids[:, :8], cache=cache)[:, -1:], *[m(ids[:, t : t + 1], cache=cache) for t in range(8, 12)]], 1)
    torch.testing.assert_close(step[:, 1:], full[:, 8:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("joint", [False, True])
def test_approximate_parallel_equals_recurrent(joint):
    q, k, v = qkv()
    kern = build_attention("approximate", joint_norm=joint)
    par = kern(q, k, v, AttentionContext(causal=True))
    rec = taylor_recurrent(q, k, v, kern.softmax_scale(8), joint_norm=joint)
    torch.testing.assert_close(par, rec, atol=2e-4, rtol=2e-4)


def test_approximate_terms_follow_the_paper_form():
    q, k, v = qkv(B=1, T=5)
    out = build_attention("approximate")(q, k, v, AttentionContext(causal=True))
    s = (q @ k.transpose(-1, -2)) / 8 ** 0.5
    i = 4  # last row sees every key
    row = s[0, 0, i]
    expected = v[0, 0].mean(0) + (row @ v[0, 0]) / row.sum() + (row**2 @ v[0, 0]) / (row**2).sum()
    torch.testing.assert_close(out[0, 0, i], expected, atol=1e-5, rtol=1e-4)


def test_non_approximate_parallel_equals_recurrent():
    q, k, v = qkv(T=20)
    q = q * 3  # spread the scores
    par = build_attention("non_approximate")(q, k, v, AttentionContext(causal=True))
    torch.testing.assert_close(par, non_approximate_recurrent(q, k, v, 8 ** -0.5), atol=1e-5, rtol=1e-4)


def test_non_approximate_is_query_independent():
    q, k, v = qkv()
    kern = build_attention("non_approximate")
    w = kern.attention_weights(q, k, v, AttentionContext(causal=False))
    torch.testing.assert_close(w[:, :, 0], w[:, :, 7])  # every query row is the same distribution


def test_mlp_mixing_is_position_wise():
    q, k, v = qkv()
    kern = build_attention("mlp_mixing")
    out = kern(q, k, v, AttentionContext(causal=True))
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (0, 5, 11):
        q2[:, :, t] += 1.0
        k2[:, :, t] -= 2.0
        v2[:, :, t] *= 3.0
    out2 = kern(q2, k2, v2, AttentionContext(causal=False))
    same = [t for t in range(12) if t not in (0, 5, 11)]
    torch.testing.assert_close(out2[:, :, same], out[:, :, same])
    torch.testing.assert_close(out, F.silu(q) * (k + v))


def test_parameter_counts_equal_standard():
    base = model(["softmax"] * 2).num_parameters()
    for name in VARIANTS:
        assert model([name] * 2).num_parameters() == base, name
        assert model([name, "softmax"]).num_parameters() == base, name


def test_per_layer_schedule_builds_the_right_kernels():
    m = create_model("gpt-tiny", num_layers=4, attention=["softmax", "random_qk", "softmax", "random_qk"],
                     attention_options=[{}, {"sigma": 0.5}, {}, {"sigma": 0.5}])
    assert [b.attn.kernel.name for b in m.blocks] == ["softmax", "random_qk", "softmax", "random_qk"]
    assert len(m.stack_hooks) == 1 and len(m.stack_hooks[0].keys) == 1  # one shared stream row
    logits = m(torch.randint(0, 256, (3, 10)))
    assert logits.shape == (3, 10, 256) and torch.isfinite(logits).all()
    assert len(model(["softmax", "softmax"]).stack_hooks) == 0


def test_stream_is_seeded_and_padding_is_extended():
    a = model(["random_qk", "softmax"], seed=0)
    b = model(["random_qk", "softmax"], seed=1)
    torch.testing.assert_close(a.stack_hooks[0].stream_0, b.stack_hooks[0].stream_0)  # seeded by the option, not init
    ids = torch.randint(0, 256, (2, 10))
    kpm = torch.ones(2, 10, dtype=torch.bool)
    kpm[1, 7:] = False
    out = a(ids, key_padding_mask=kpm)
    assert out.shape == (2, 10, 256) and torch.isfinite(out[kpm]).all()


def test_fixed_tokens_are_validated():
    with pytest.raises(ValueError, match="max_seq_len"):
        model(["fixed_seq_qk", "softmax"], attention_options=[{"tokens": [1, 2, 3]}, {}])
    m = model(["fixed_seq_qk", "softmax"], attention_options=[{"tokens": list(range(40))}, {}])
    torch.testing.assert_close(m.stack_hooks[0].stream_0, torch.arange(32))


def test_stream_models_keep_standard_checkpoint_keys():
    std = model(["softmax", "softmax"]).state_dict()
    for name in ("random_qk", "fixed_seq_qk", "static_emb_qk"):
        assert set(model([name, "softmax"]).state_dict()) == set(std), name
