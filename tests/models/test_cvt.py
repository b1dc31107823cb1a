"""CvT on the attention shell: token counts from the convolution formula, a block with centred-delta convolutions
and identity BatchNorm is standard multi-head attention scaled by the width, the class token bypasses the
convolutions, every kernel serves or is refused at build naming those that can, bad input, and it trains."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import CapabilityError, list_attention
from attnlab.models import create_model
from attnlab.models.vision.cvt import ConvAttention, conv_out
from imagekit import digits_loss_ratio

DIGITS = dict(image_size=8, num_channels=1, stage_embed=[[3, 1, 1], [3, 2, 1]])  # grids 8x8 and 4x4


@pytest.mark.parametrize("side", [56, 28, 14, 7, 5])
def test_token_counts_follow_the_convolution_formula(side):
    attn = ConvAttention(8, 2, "softmax", {}, kv_stride=2, bias=True, dropout=0.0, max_seq_len=side * side)
    fmap = torch.randn(1, 8, side, side)
    keys = attn.conv_k(fmap)
    assert keys.shape[1] == conv_out(side, 3, 2, 1) ** 2 == ((side - 1) // 2 + 1) ** 2
    assert attn.conv_q(fmap).shape[1] == side * side


def _identity_projections(attn: ConvAttention) -> None:
    """Centred-delta depth-wise kernels and BatchNorms that are the identity in eval mode."""
    with torch.no_grad():
        for proj in (attn.conv_q, attn.conv_k, attn.conv_v):
            proj.conv.weight.zero_()
            proj.conv.weight[:, :, 1, 1] = 1.0
            proj.bn.weight.fill_(1.0), proj.bn.bias.zero_(), proj.bn.running_mean.zero_()
            proj.bn.running_var.fill_(1.0 - proj.bn.eps)


@pytest.mark.parametrize("prefix", [0, 1])
def test_delta_convolutions_and_identity_batchnorm_give_standard_attention_scaled_by_the_width(prefix):
    torch.manual_seed(0)
    C, H, rows = 12, 3, 5
    attn = ConvAttention(C, H, "softmax", {}, kv_stride=1, bias=True, dropout=0.0, max_seq_len=26).eval()
    _identity_projections(attn)
    x = torch.randn(2, prefix + rows * rows, C)
    shell = attn.attn
    q, k, v = (shell.split_heads(p(x), H) for p in (shell.q_proj, shell.k_proj, shell.v_proj))
    weights = torch.softmax(q @ k.transpose(-1, -2) * C ** -0.5, dim=-1)  # CvT: the full width, not C / H
    expected = shell.out_proj((weights @ v).transpose(1, 2).reshape(2, -1, C))
    torch.testing.assert_close(attn(x, (rows, rows), prefix), expected, atol=1e-5, rtol=1e-4)


def test_the_class_token_bypasses_the_convolutions():
    torch.manual_seed(0)
    attn = ConvAttention(8, 2, "softmax", {}, kv_stride=2, bias=True, dropout=0.0, max_seq_len=17).eval()
    seen = []
    attn.attn.q_proj.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        for proj in (attn.conv_q, attn.conv_k, attn.conv_v):
            proj.conv.weight.zero_()
    x = torch.randn(2, 17, 8)
    attn(x, (4, 4), prefix=1)
    bn = attn.conv_q.bn  # a zero convolution leaves BatchNorm's constant on every patch row
    constant = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert torch.equal(seen[0][:, 0], x[:, 0])
    torch.testing.assert_close(seen[0][:, 1:], constant.expand(2, 16, 8))


@pytest.mark.parametrize("name", sorted(list_attention()))
def test_every_kernel_serves_a_self_attention_cvt_or_is_refused_at_build(name):
    """With kv_stride=1 every bidirectional kernel runs on the stage grids, or the build names the ones that do."""
    try:
        model = create_model("cvt-tiny", attention=name, kv_stride=1).eval()
    except CapabilityError as e:
        assert "kernels that can:" in str(e) or "bidirectional" in str(e)
        assert "softmax" in str(e)
        return
    torch.manual_seed(0)
    out = model.classify(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_strided_keys_need_a_cross_attention_kernel():
    with pytest.raises(CapabilityError, match=r"stage 0 \(cross-attention from the 16x16 grid .*kernels that can: "
                                              r"\[.*'softmax'.*\]; or set kv_stride=1"):
        create_model("cvt-tiny", attention="neighborhood")
    with pytest.raises(CapabilityError, match="with a class token"):
        create_model("cvt-tiny", attention="neighborhood", kv_stride=1, pooling="cls")


def test_bad_images_and_sizes_get_one_clear_line():
    model = create_model("cvt-tiny")
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, 32, 32\), got \(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="leaves no tokens after stage 1"):
        create_model("cvt-tiny", image_size=2, stage_embed=[[3, 2, 1], [5, 2, 0]])
    with pytest.raises(ValueError, match="one entry per stage in depths, stage_heads, stage_dims and stage_embed"):
        create_model("cvt-tiny", stage_embed=[[3, 2, 1]])


@pytest.mark.parametrize("attention, kv_stride", [("softmax", 2), ("neighborhood", 1)])
def test_cvt_learns_digits_with_two_kernels(attention, kv_stride):
    body = create_model("cvt-tiny", attention=attention, kv_stride=kv_stride, **DIGITS,
                        attention_options={"kernel_size": 3} if attention == "neighborhood" else {})
    assert digits_loss_ratio(body, steps=150, lr=3e-3) < 0.6


def test_attention_maps_per_block_with_strided_keys():
    model = create_model("cvt-tiny", pooling="cls").eval()
    maps = model.attention_maps(torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(1, 1, 256, 64), (1, 2, 65, 17)]
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(1, 2, 65))
    kernels = [b.attn.attn.kernel for s in model.stages for b in s.blocks]
    assert not any(k._forward_hooks for k in kernels)  # the recording is switched off again


def test_batchnorm_statistics_update_in_training_only():
    model = create_model("cvt-tiny")
    bn = model.stages[0].blocks[0].attn.conv_k.bn
    before = bn.running_mean.clone()
    model.eval()(torch.randn(2, 3, 32, 32))
    assert torch.equal(bn.running_mean, before)
    model.train()(torch.randn(4, 3, 32, 32))
    assert not torch.equal(bn.running_mean, before)
