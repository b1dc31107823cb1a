"""Generation with the KV cache equals re-running the full sequence (tokens exactly, logits to 1e-5)."""

from __future__ import annotations

import pytest
import torch

from attnlab.infer import generate, sample_next
from attnlab.models import create_model

V = 41
ATOL, RTOL = 1e-5, 1e-4


def tiny_gpt(**overrides):
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, dim=32, num_layers=2, num_heads=4, max_seq_len=32)
    return create_model("gpt-tiny", **{**cfg, **overrides}).eval()


def full_rerun(model, prompt, n, temperature=0.0, top_k=None, top_p=None, generator=None):
    """The cache-free loop generation must equal: re-encode the (last max_seq_len) tokens every step."""
    out = prompt
    for _ in range(n):
        logits = model(out[:, -model.cfg.max_seq_len:])[:, -1]
        out = torch.cat([out, sample_next(logits, temperature, top_k, top_p, generator)[:, None]], dim=1)
    return out


MODEL_VARIANTS = {
    "learned": {},
    "sinusoidal": dict(position="sinusoidal"),
    "rope": dict(position="rope"),
    "alibi": dict(position="alibi"),
    "relative": dict(position="relative"),
    "gqa-rope": dict(position="rope", num_kv_heads=2),
    "mqa-alibi": dict(position="alibi", num_kv_heads=1),
    "postnorm": dict(prenorm=False),
    "modern": dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, activation="silu"),
}


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
def test_greedy_cached_generation_equals_full_rerun(variant):
    model = tiny_gpt(**MODEL_VARIANTS[variant])
    prompt = torch.randint(0, V, (2, 6))
    out = generate(model, prompt, max_new_tokens=14)
    assert out.shape == (2, 20) and torch.equal(out[:, :6], prompt)
    assert torch.equal(out, full_rerun(model, prompt, 14))
    # the logits of every cached step equal the full forward's
    with torch.no_grad():
        cache = model.new_cache(2)
        steps = [model(out[:, :6], cache=cache)] + [model(out[:, t:t + 1], cache=cache) for t in range(6, 20)]
        torch.testing.assert_close(torch.cat(steps, 1), model(out), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("variant", ["learned", "rope", "alibi", "relative"])
def test_seeded_sampling_cached_equals_full_rerun(variant):
    model = tiny_gpt(**MODEL_VARIANTS[variant])
    prompt = torch.randint(0, V, (3, 4))
    kw = dict(temperature=0.9, top_k=20, top_p=0.95)
    out = generate(model, prompt, 16, generator=torch.Generator().manual_seed(5), **kw)
    ref = full_rerun(model, prompt, 16, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(out, ref)
    assert torch.equal(out, generate(model, prompt, 16, generator=torch.Generator().manual_seed(5), **kw))
    other = generate(model, prompt, 16, generator=torch.Generator().manual_seed(6), **kw)
    assert not torch.equal(out, other)


@pytest.mark.parametrize("variant", ["learned", "rope", "alibi"])
def test_generation_past_max_seq_len_slides_the_window(variant):
    model = tiny_gpt(max_seq_len=12, **MODEL_VARIANTS[variant])
    prompt = torch.randint(0, V, (2, 5))
    out = generate(model, prompt, 15)  # 20 tokens > max_seq_len = 12
    assert out.shape == (2, 20)
    assert torch.equal(out, full_rerun(model, prompt, 15))
    assert torch.equal(out, generate(model, prompt, 15, use_cache=False))
    long_prompt = torch.randint(0, V, (1, 15))  # the prompt alone is longer than the context
    assert torch.equal(generate(model, long_prompt, 3), full_rerun(model, long_prompt, 3))


def test_stop_tokens_end_rows_and_pad_them():
    model = tiny_gpt()
    prompt = torch.randint(0, V, (2, 4))
    free = generate(model, prompt, 10)
    stop = int(free[0, 6])  # the third new token of row 0
    out = generate(model, prompt, 10, stop_tokens=[stop])
    first = int((free[0, 4:] == stop).nonzero()[0]) + 4
    assert torch.equal(out[0, : first + 1], free[0, : first + 1])
    assert (out[0, first + 1:] == stop).all()
    row1 = out[1, 4:]
    if (row1 == stop).any():  # row 1 may stop too; until then it follows the free run
        j = int((row1 == stop).nonzero()[0]) + 4
        assert torch.equal(out[1, : j + 1], free[1, : j + 1])
    else:
        assert torch.equal(out[1], free[1])
    # a stop token every row produces at once ends generation after one step
    single = generate(model, prompt[:1], 10, stop_tokens=[int(free[0, 4])])
    assert single.shape == (1, 5)


def test_generate_restores_training_mode_and_validates():
    model = tiny_gpt().train()
    out = generate(model, torch.zeros(1, 2, dtype=torch.long), 3)
    assert model.training and out.shape == (1, 5)
    assert torch.equal(generate(model, out, 0), out)
    with pytest.raises(ValueError, match=r"at least one token, got \(1, 0\)"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0, got -1"):
        generate(model, out, -1)
