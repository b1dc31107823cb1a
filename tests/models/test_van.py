"""VAN: its block from the equations, every grid module as its token mixer, the official size, learning digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention.capabilities import CapabilityError
from attnlab.attention.grid import list_grid_attention
from attnlab.models import create_model
from attnlab.models.vision.van import GridBlock, SpatialUnit, build_mixer

from imagekit import digits_loss_ratio

DIGITS = dict(image_size=8, num_channels=1, stage_embed=[[3, 1, 1], [3, 2, 1]])  # grids 8x8, 4x4


def test_van_b0_has_the_reference_size_and_grids():
    model = create_model("van-b0")
    assert model.num_parameters() == 4_105_800  # VAN-B0: 4.1M
    assert model.sides == [56, 28, 14, 7]
    assert create_model("van-fashion").sides == [14, 7, 4]


def test_block_equals_its_equations():
    torch.manual_seed(0)
    block = GridBlock(8, build_mixer("lka", 8, {}), 16, drop_path=0.0, layer_scale=0.3, dropout=0.0).eval()
    with torch.no_grad():
        for bn in (block.norm1, block.norm2):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 1.5)
        block.layer_scale_1.uniform_(0.1, 1), block.layer_scale_2.uniform_(0.1, 1)
    x = torch.randn(2, 8, 6, 6)

    def bn(mod, t):
        return ((t - mod.running_mean.view(1, -1, 1, 1)) / torch.sqrt(mod.running_var.view(1, -1, 1, 1) + mod.eps)
                * mod.weight.view(1, -1, 1, 1) + mod.bias.view(1, -1, 1, 1))

    def conv(c, t, **kw):
        return F.conv2d(t, c.weight, c.bias, padding=c.padding, dilation=c.dilation, groups=c.groups)

    unit, mlp = block.attn, block.mlp
    lka = unit.spatial_gating_unit
    h = F.gelu(conv(unit.proj_1, bn(block.norm1, x)))
    h = conv(unit.proj_2, h * conv(lka.conv1, conv(lka.conv_spatial, conv(lka.conv0, h)))) + bn(block.norm1, x)
    y = x + block.layer_scale_1.view(1, -1, 1, 1) * h
    m = conv(mlp.fc2, F.gelu(conv(mlp.dwconv, conv(mlp.fc1, bn(block.norm2, y)))))
    torch.testing.assert_close(block(x), y + block.layer_scale_2.view(1, -1, 1, 1) * m, rtol=1e-5, atol=1e-5)


def test_gates_sit_in_the_spatial_unit_and_mixers_stand_alone():
    assert isinstance(build_mixer("psa", 8, {}), SpatialUnit)
    assert isinstance(build_mixer("ulsam", 8, {"groups": 2}), SpatialUnit)
    assert type(build_mixer("atconv", 8, {})).__name__ == "AttentiveConvolution"


@pytest.mark.parametrize("name", ["atconv", "lka", "psa", "ulsam"])
def test_every_grid_module_runs_as_the_mixer_of_every_stage(name):
    assert name in list_grid_attention()
    model = create_model("van-tiny", grid_attention=name).eval()
    out = model.classify(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert [f.shape[1:] for f in model.features(torch.randn(1, 3, 32, 32))] == [(16, 16, 16), (32, 8, 8)]


def test_one_module_per_stage_and_bad_configs():
    model = create_model("van-tiny", grid_attention=["ulsam", "psa"], grid_attention_options={})
    assert type(model.stages[0].blocks[0].attn.spatial_gating_unit).__name__ == "ULSAM"
    assert type(model.stages[1].blocks[0].attn.spatial_gating_unit).__name__ == "PolarizedSelfAttention"
    with pytest.raises(ValueError, match="one module per stage: 3 names for 2 stages"):
        create_model("van-tiny", grid_attention=["lka"] * 3)
    with pytest.raises(ValueError, match="unknown grid attention 'lak'.*Did you mean"):
        create_model("van-tiny", grid_attention="lak")
    with pytest.raises(CapabilityError, match="set grid_attention .* instead of attention='linear'"):
        create_model("van-tiny", attention="linear")
    with pytest.raises(ValueError, match="groups=3"):
        create_model("van-tiny", grid_attention="ulsam", grid_attention_options={"groups": 3})
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, 32, 32\)"):
        create_model("van-tiny")(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="leaves no pixel"):
        create_model("van-tiny", image_size=2, stage_embed=[[3, 2, 0], [3, 2, 1]])
    with pytest.raises(CapabilityError, match="no token-to-token attention weights"):
        create_model("van-tiny").attention_maps(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["lka", "atconv"])
def test_van_learns_digits_with_two_modules(name):
    body = create_model("van-tiny", grid_attention=name, **DIGITS)
    assert digits_loss_ratio(body, steps=120, lr=3e-3) < 0.5
