"""T2T-ViT: the soft split equals the reference unfold reshape, the fixed position table, token counts and the
receptive field of nested soft splits (31 pixels at 224 px), the official smallest's size, kernels in the backbone
and in the token layers, bad input, and it trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import CapabilityError
from attnlab.models import create_model
from attnlab.models.vision.t2t import sinusoid_table, soft_split
from imagekit import digits_loss_ratio


@pytest.mark.parametrize("k, s, p", [(7, 4, 2), (3, 2, 1), (3, 1, 1)])
def test_soft_split_is_the_reference_unfold_reshape(k, s, p):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 13, 13)
    out = soft_split(x, k, s, p)
    padded = F.pad(x, (p, p, p, p))
    side = (13 + 2 * p - k) // s + 1
    assert out.shape == (2, side * side, 3 * k * k)
    for i, j in [(0, 0), (side - 1, 1), (side // 2, side - 1)]:
        window = padded[:, :, i * s:i * s + k, j * s:j * s + k]  # (B, C, k, k): feature c*k^2 + ky*k + kx
        assert torch.equal(out[:, i * side + j], window.reshape(2, -1))


def test_position_table_interleaves_sin_and_cos():
    table = sinusoid_table(10, 8)
    assert torch.equal(table[0], torch.tensor([0.0, 1.0] * 4))
    torch.testing.assert_close(table[:, 0], torch.sin(torch.arange(10.0)))
    torch.testing.assert_close(table[3, 3], torch.cos(torch.tensor(3.0 / 10000 ** (2 / 8))))


def test_official_smallest_token_count_and_size():
    model = create_model("t2t-vit-7")
    assert model.embed.t2t.grids == [(56, 56), (28, 28), (14, 14)] and model.embed.num_tokens == 197
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 4.3e6) / 4.3e6 < 0.02, n  # the paper's 4.3M (Performer token layers; here softmax ones)


def test_receptive_field_of_one_final_token_is_31_pixels():
    """With token layers that mix no tokens, one final token sees 7 + 2*4 + 2*8 = 31 pixels on a side."""
    t2t = create_model("t2t-vit-7").embed.t2t
    for layer in t2t.layers:
        layer.forward = (lambda w: lambda x, grid: x @ w)(torch.randn(layer.qkv.in_features, 64))
    pixels = torch.zeros(1, 3, 224, 224, requires_grad=True)
    t2t(pixels)[0, 7 * 14 + 7].sum().backward()
    rows, cols = (pixels.grad[0].abs().sum(0) > 0).nonzero().unbind(1)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (31, 31)


def test_backbone_grid_kernels_and_the_class_token():
    out = create_model("t2t-vit-tiny", pooling="mean", attention="neighborhood",
                       attention_options={"kernel_size": 3}).eval().classify(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    with pytest.raises(CapabilityError, match="cannot place the T2TViT's \\[CLS\\] token.*pooling='mean'"):
        create_model("t2t-vit-tiny", attention="neighborhood", attention_options={"kernel_size": 3})


def test_token_layers_take_any_bidirectional_kernel():
    model = create_model("t2t-vit-tiny", token_attention="linear").eval()
    assert model.embed.t2t.layers[0].kernel.name == "linear"
    assert torch.isfinite(model.classify(torch.randn(2, 3, 32, 32))).all()
    with pytest.raises(ValueError, match="token_attention: unknown attention 'nope'"):
        create_model("t2t-vit-tiny", token_attention="nope")


def test_bad_input_gets_one_clear_line():
    with pytest.raises(ValueError, match="leaves no tokens after soft split 1"):
        create_model("t2t-vit-tiny", image_size=4, stage_embed=[[3, 4, 1], [5, 2, 0]])
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, 32, 32\), got \(1, 1, 32, 32\)"):
        create_model("t2t-vit-tiny")(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize("attention, token_attention", [("softmax", "softmax"), ("linear", "linear")])
def test_t2t_learns_digits_with_two_kernels(attention, token_attention):
    body = create_model("t2t-vit-tiny", attention=attention, token_attention=token_attention, image_size=8,
                        num_channels=1, stage_embed=[[3, 1, 1], [3, 2, 1]], pooling="mean", max_seq_len=64)
    assert digits_loss_ratio(body, steps=150, lr=3e-3) < 0.6
