"""UniFormer: local and global blocks against their equations, any kernel in the global stages, learning digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention.capabilities import CapabilityError
from attnlab.attention.reference import reference_attention
from attnlab.attention.registry import list_attention
from attnlab.models import create_model
from attnlab.models.vision.uniformer import GlobalBlock, LocalBlock

from imagekit import digits_loss_ratio

DIGITS = dict(image_size=8, num_channels=1, stage_embed=[[2, 2, 0], [2, 2, 0]])  # grids 4x4, 2x2


def test_uniformer_s_has_the_reference_layout():
    model = create_model("uniformer-s")
    assert round(model.num_parameters() / 1e6, 1) == 21.5  # UniFormer-S: 22M
    assert model.sides == [56, 28, 14, 7]
    kinds = [[type(b).__name__ for b in s.blocks] for s in model.stages]
    assert kinds == [["LocalBlock"] * 3, ["LocalBlock"] * 4, ["GlobalBlock"] * 8, ["GlobalBlock"] * 3]
    assert [s.blocks[0].attn.num_heads for s in model.stages[2:]] == [320 // 64, 512 // 64]


def _global_block(model) -> GlobalBlock:
    return next(b for s in model.stages for b in s.blocks if isinstance(b, GlobalBlock))


def test_global_block_without_position_conv_is_a_pre_norm_vit_block():
    torch.manual_seed(0)
    block = _global_block(create_model("uniformer-tiny")).eval()
    with torch.no_grad():
        block.pos_embed.weight.zero_(), block.pos_embed.bias.zero_()
    x = torch.randn(2, 32, 4, 4)
    t = x.flatten(2).transpose(1, 2)
    attn, H = block.attn, block.attn.num_heads
    q, k, v = (p(block.norm1(t)).view(2, 16, H, -1).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    a = reference_attention(q, k, v)[0].transpose(1, 2).reshape(2, 16, 32)
    t = t + attn.out_proj(a)
    t = t + block.mlp(block.norm2(t))
    torch.testing.assert_close(block(x), t.transpose(1, 2).reshape(2, 32, 4, 4), rtol=1e-5, atol=1e-5)


def test_local_block_with_delta_aggregator_and_identity_maps_adds_batchnorm():
    torch.manual_seed(1)
    block = LocalBlock(6, 12, drop_path=0.0, dropout=0.0).eval()
    with torch.no_grad():
        block.pos_embed.weight.zero_(), block.pos_embed.bias.zero_()
        for c in (block.conv1, block.conv2):
            c.weight.copy_(torch.eye(6).view(6, 6, 1, 1)), c.bias.zero_()
        block.attn.weight.zero_(), block.attn.bias.zero_()
        block.attn.weight[:, 0, 2, 2] = 1.0
        block.mlp[3].weight.zero_(), block.mlp[3].bias.zero_()
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(block(x), x + block.norm1(x))
    torch.testing.assert_close(block.norm1(x), x / (1 + block.norm1.eps) ** 0.5)  # identity BatchNorm (eval)


def test_local_block_is_translation_equivariant_inside_the_border():
    torch.manual_seed(2)
    block = LocalBlock(4, 8, drop_path=0.0, dropout=0.0).eval()
    x = torch.randn(1, 4, 16, 16)
    shifted = torch.roll(x, shifts=(1, 1), dims=(2, 3))
    y, ys = block(x), block(shifted)
    torch.testing.assert_close(ys[..., 5:-4, 5:-4], y[..., 4:-5, 4:-5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(list_attention()))
def test_every_kernel_serves_the_global_stage_or_is_refused_at_build(name):
    try:
        model = create_model("uniformer-tiny", attention=name).eval()
    except CapabilityError as e:
        assert "kernels that can:" in str(e) or "bidirectional" in str(e)
        return
    torch.manual_seed(0)
    out = model.classify(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_schedules_and_bad_configs():
    model = create_model("uniformer-tiny", attention=["softmax", "neighborhood"],
                         attention_options=[{}, {"kernel_size": 3}])
    assert _global_block(model).attn.kernel.name == "neighborhood"
    with pytest.raises(ValueError, match="block 0 is in local stage 0 .* gives it 'linear'"):
        create_model("uniformer-tiny", attention=["linear", "softmax"])
    with pytest.raises(ValueError, match="local_stages=3 but the model has 2 stages"):
        create_model("uniformer-tiny", local_stages=3)
    with pytest.raises(ValueError, match="not divisible by its 3 heads"):
        create_model("uniformer-tiny", stage_heads=[1, 3])
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, 32, 32\)"):
        create_model("uniformer-tiny")(torch.randn(1, 3, 28, 28))


def test_attention_maps_of_the_global_blocks():
    model = create_model("uniformer-tiny", depths=[1, 2], attention=["softmax"] * 3).eval()
    maps = model.attention_maps(torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(1, 2, 16, 16)] * 2
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(1, 2, 16))
    with pytest.raises(CapabilityError, match="only local stages"):
        create_model("uniformer-tiny", local_stages=2).attention_maps(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_uniformer_learns_digits_with_two_kernels(attention):
    body = create_model("uniformer-tiny", attention=attention, **DIGITS)
    assert digits_loss_ratio(body, steps=120, lr=3e-3) < 0.5
