"""ConViT GPSA: gate limits, row sums, locality initialisation, grid handling."""

import pytest
import torch

from attnlab.attention import AttentionContext, CapabilityError, build_attention, reference_attention
from attnlab.attention.kernels.gpsa import init_value_identity_, relative_indices
from attnlab.models.registry import create_model


def qkv(H=4, T=12, seed=0, B=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, T, 8, generator=g), torch.randn(B, H, T, 8, generator=g), torch.randn(B, H, T, 8, generator=g)


def gpsa(H=4, **kw):
    return build_attention("gpsa", structural=dict(num_heads=H), **kw)


def test_closed_gate_is_content_attention():
    q, k, v = qkv()
    kern = gpsa()
    with torch.no_grad():
        kern.gating_param.fill_(-100.0)
    ref, _ = reference_attention(q, k, v)
    torch.testing.assert_close(kern(q, k, v, AttentionContext(grid=(3, 4))), ref, atol=1e-5, rtol=1e-4)


def test_open_gate_ignores_content():
    q, k, v = qkv()
    q2, k2, _ = qkv(seed=5)
    kern = gpsa()
    with torch.no_grad():
        kern.gating_param.fill_(100.0)
    ctx = AttentionContext(grid=(3, 4))
    torch.testing.assert_close(kern(q, k, v, ctx), kern(q2, k2, v, ctx))
    # and equals softmax over the positional logits
    pos = kern.pos_proj(relative_indices(3, 4)).permute(2, 0, 1).softmax(-1)  # (H, T, T)
    torch.testing.assert_close(kern(q, k, v, ctx), torch.einsum("hts,bhsd->bhtd", pos, v), atol=1e-5, rtol=1e-4)


def test_rows_sum_to_one_with_and_without_padding():
    q, k, v = qkv()
    kern = gpsa()
    w = kern.attention_weights(q, k, v, AttentionContext(grid=(3, 4)))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 12))
    kpm = torch.ones(2, 12, dtype=torch.bool)
    kpm[0, 8:] = False
    w = kern.attention_weights(q, k, v, AttentionContext(grid=(3, 4), key_padding_mask=kpm))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 12))
    assert w[0, :, :, 8:].abs().max() == 0  # both maps masked before mixing


def test_local_init_peaks_at_each_heads_offset():
    H, rows, cols = 9, 7, 7
    kern = gpsa(H=H, locality_strength=10.0)
    rel = relative_indices(rows, cols)
    pos = kern.pos_proj(rel).permute(2, 0, 1)  # (H, T, T)
    centre = 3 * cols + 3  # an interior query
    for h1 in range(3):
        for h2 in range(3):
            h = h1 + 3 * h2
            j = int(pos[h, centre].argmax())
            dy, dx = j // cols - 3, j % cols - 3
            assert (dx, dy) == (h2 - 1, h1 - 1), f"head {h}: argmax at {(dx, dy)}"
    assert torch.sigmoid(kern.gating_param).allclose(torch.full((H,), torch.sigmoid(torch.tensor(1.0)).item()))


def test_relative_indices_non_square():
    rel = relative_indices(2, 3)  # tokens (r, c): 0=(0,0) ... 5=(1,2)
    assert rel[0, 5].tolist() == [2.0, 1.0, 5.0]
    assert rel[5, 0].tolist() == [-2.0, -1.0, 5.0]


def test_grid_errors():
    q, k, v = qkv()
    with pytest.raises(CapabilityError, match="grid"):
        gpsa()(q, k, v, AttentionContext())
    with pytest.raises(ValueError, match="cells"):
        gpsa()(q, k, v, AttentionContext(grid=(3, 3)))
    with pytest.raises(CapabilityError, match="causal"):
        gpsa()(q, k, v, AttentionContext(grid=(3, 4), causal=True))


def test_value_identity_init_in_an_encoder():
    model = create_model("encoder-tiny", attention="gpsa")
    assert init_value_identity_(model) == 2
    torch.testing.assert_close(model.blocks[0].attn.v_proj.weight, torch.eye(64))
    h = model(torch.randint(0, 256, (2, 16)), grid=(4, 4))
    assert h.shape == (2, 16, 64) and torch.isfinite(h).all()
