"""Every registered attention kernel inside the model families (the model half of the conformance suite).

GPT for causal kernels, Encoder for bidirectional ones, built with
``create_model("gpt-tiny" | "encoder-tiny", attention=name)``. Grid kernels get ``grid=(rows, cols)``.
KV-cache decoding must equal the full forward for every kernel that declares ``kv_cache``, also with
ALiBi (bias alignment under the cache) and in a per-layer schedule mixed with softmax.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import CapabilityError, build_attention, list_attention
from attnlab.models import create_model

# Options passed instead of a kernel's defaults (keep tiny, explain each entry; prefer fixing defaults).
KERNEL_OPTIONS: dict[str, dict] = {
    "window": {"window_size": [5, 7], "shift": 2},  # Swin windows must tile GRID (5, 7)
}

V = 37
T1D = 21
GRID = (5, 7)
ATOL, RTOL = 1e-5, 1e-4


def caps(name: str):
    structural = dict(num_heads=4, num_kv_heads=4, head_dim=16, max_seq_len=128)
    return build_attention(name, structural=structural, **KERNEL_OPTIONS.get(name, {})).capabilities


def _names(pred) -> list[str]:
    return [n for n in list_attention() if pred(caps(n))]


def _build(preset: str, name: str, **overrides):
    torch.manual_seed(0)
    return create_model(preset, vocab_size=V, attention=name, attention_options=KERNEL_OPTIONS.get(name, {}),
                        **overrides)


def check_gradients(model, name: str) -> None:
    """Every parameter gets a finite gradient; every attention weight matrix a non-zero one."""
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: bad gradient for {pname}"
        if ".attn." in pname and pname.endswith("weight"):
            assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


def _shape(name: str) -> tuple[int, dict]:
    """Sequence length and the extra forward kwargs (a grid for kernels that need one)."""
    if caps(name).requires_grid:
        return GRID[0] * GRID[1], {"grid": GRID}
    return T1D, {}


@pytest.mark.parametrize("name", _names(lambda c: c.causal))
def test_gpt_trains_and_is_causal(name: str):
    model = _build("gpt-tiny", name).train()
    T, kw = _shape(name)
    ids = torch.randint(0, V, (2, T))
    logits = model(ids, **kw)
    assert logits.shape == (2, T, V) and torch.isfinite(logits).all()
    F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1)).backward()
    check_gradients(model, name)
    changed = ids.clone()
    changed[:, T // 2:] = (changed[:, T // 2:] + 1) % V
    with torch.no_grad():  # a fresh model per call: stochastic kernels draw the same noise
        ref = _build("gpt-tiny", name).eval()(ids, **kw)
        out = _build("gpt-tiny", name).eval()(changed, **kw)
    torch.testing.assert_close(out[:, : T // 2], ref[:, : T // 2], atol=ATOL, rtol=RTOL)
    maps = _build("gpt-tiny", name).eval().attention_maps(ids, **kw)
    assert len(maps) == 2 and all(m.shape == (2, 4, T, T) and torch.isfinite(m).all() for m in maps)
    assert all(m.triu(1).abs().max() == 0 for m in maps), f"{name}: attention map weighs future tokens"


@pytest.mark.parametrize("name", _names(lambda c: c.bidirectional))
def test_encoder_trains_and_ignores_padding(name: str):
    model = _build("encoder-tiny", name).train()
    T, kw = _shape(name)
    ids = torch.randint(0, V, (2, T))
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, T - 6:] = False
    if not caps(name).key_padding_mask:
        mask = None
    logits = model.mlm_logits(ids, mask, **kw)
    assert logits.shape == (2, T, V) and torch.isfinite(logits).all()
    F.cross_entropy(logits.reshape(-1, V), ids.reshape(-1)).backward()
    check_gradients(model, name)
    if mask is None:
        return
    other = torch.where(mask, ids, (ids + 5) % V)
    with torch.no_grad():  # a fresh model per call: stochastic kernels draw the same noise
        ref = _build("encoder-tiny", name).eval()(ids, mask, **kw)
        out = _build("encoder-tiny", name).eval()(other, mask, **kw)
    torch.testing.assert_close(out[mask], ref[mask], atol=ATOL, rtol=RTOL)


def _cached_logits(model, ids: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    cache = model.new_cache(ids.shape[0])
    outs, start = [], 0
    for n in chunks:
        outs.append(model(ids[:, start:start + n], cache=cache))
        start += n
    assert start == ids.shape[1]
    return torch.cat(outs, dim=1)


CACHE_CHUNKS = [7, 1, 1, 1, 4, 1, 1, 1, 1, 1, 1]  # prefill, single steps, a chunk, more steps (T = 20)


@pytest.mark.parametrize("position", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("name", _names(lambda c: c.causal and c.kv_cache and not c.requires_grid))
def test_kv_cache_equals_full_forward(name: str, position: str):
    if position == "alibi" and not caps(name).attn_bias:
        pytest.skip(f"{name} declares attn_bias=False")
    model = _build("gpt-tiny", name, position=position, num_kv_heads=2).eval()
    ids = torch.randint(0, V, (2, sum(CACHE_CHUNKS)))
    with torch.no_grad():
        full = model(ids)
        cached = _cached_logits(model, ids, CACHE_CHUNKS)
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", _names(lambda c: c.causal and c.kv_cache and not c.requires_grid))
def test_kv_cache_in_mixed_schedule(name: str):
    """A per-layer schedule mixing this kernel with softmax (different cache kinds per layer)."""
    position = "alibi" if caps(name).attn_bias else "learned"
    torch.manual_seed(0)
    model = create_model("gpt-tiny", vocab_size=V, num_layers=2, attention=[name, "softmax"], position=position,
                         attention_options=[KERNEL_OPTIONS.get(name, {}), {}]).eval()
    ids = torch.randint(0, V, (2, sum(CACHE_CHUNKS)))
    with torch.no_grad():
        torch.testing.assert_close(_cached_logits(model, ids, CACHE_CHUNKS), model(ids), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", list_attention())
def test_model_build_checks_capabilities(name: str):
    """Building a model that needs an undeclared ability raises CapabilityError; declared ones build."""
    c = caps(name)
    for preset, needed in (("gpt-tiny", c.causal), ("encoder-tiny", c.bidirectional)):
        if needed:
            model = _build(preset, name)
            if preset == "gpt-tiny" and not c.kv_cache:
                with pytest.raises(CapabilityError, match="kv_cache"):
                    model.new_cache(1)
            elif preset == "gpt-tiny":
                assert len(model.new_cache(1)) == model.cfg.num_layers
        else:
            with pytest.raises(CapabilityError, match="causal" if preset == "gpt-tiny" else "bidirectional"):
                _build(preset, name)
    preset = "gpt-tiny" if c.causal else "encoder-tiny"
    if c.attn_bias:
        assert _build(preset, name, position="alibi").position_bias is not None
    else:
        with pytest.raises(CapabilityError, match="attn_bias"):
            _build(preset, name, position="alibi")
