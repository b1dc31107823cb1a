"""DiNAT on the Swin-style hierarchy: the tokenizer and downsampler grids, the dilation schedule (DiNAT's 8-4-2-1 at
224 px), a dilated block attends exactly to its dilated neighbourhood, other kernels serve, and it trains."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import CapabilityError
from attnlab.models import create_model
from imagekit import digits_loss_ratio


def _schedule(model):
    return [[(b.attn.kernel.kernel_size[0], b.attn.kernel.dilation[0]) for b in s.blocks] for s in model.stages]


def test_grids_and_dilation_schedule_of_the_official_smallest():
    model = create_model("dinat-mini")
    assert model.grids == [(56, 56), (28, 28), (14, 14), (7, 7)]
    dil = [[d for _, d in stage] for stage in _schedule(model)]
    assert dil == [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]]


def test_small_grids_shrink_the_neighbourhood_and_options_win():
    model = create_model("dinat-tiny", image_size=16)  # grids 4x4 and 2x2: kernels 3 and 1
    assert _schedule(model) == [[(3, 1), (3, 1)], [(1, 1), (1, 1)]]
    fixed = create_model("dinat-tiny", attention_options={"dilation": 1})
    assert {d for stage in _schedule(fixed) for _, d in stage} == {1}


def test_a_dilated_block_attends_to_its_dilated_neighbourhood():
    model = create_model("dinat-tiny").eval()  # stage 0: 8x8 grid, 3x3 kernel, dilation 2 in block 1
    maps = model.attention_maps(torch.randn(1, 3, 32, 32))
    w = maps[1][0, 0].view(8, 8, 8, 8)  # (query row, query col, key row, key col)
    attended = (w[3, 3] > 0).nonzero().tolist()
    assert attended == [[r, c] for r in (1, 3, 5) for c in (1, 3, 5)]
    assert ((maps[0][0, 0].view(8, 8, 8, 8)[3, 3] > 0).nonzero().tolist()
            == [[r, c] for r in (2, 3, 4) for c in (2, 3, 4)])


def test_tokenizer_and_downsampler_shapes_and_bad_input():
    model = create_model("dinat-tiny").eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 16, 32)
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="must be even"):
        create_model("dinat-tiny", dim=15, stage_heads=[3, 5])


@pytest.mark.parametrize("name", ["softmax", "axial", "linear"])
def test_other_kernels_serve_every_stage(name):
    out = create_model("dinat-tiny", attention=name).eval().classify(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_a_causal_only_kernel_is_refused_at_build():
    from attnlab.attention import list_attention
    from attnlab.attention.registry import get_attention_class

    causal_only = [n for n in list_attention() if not get_attention_class(n).capabilities.bidirectional]
    for name in causal_only:
        with pytest.raises(CapabilityError, match="bidirectional"):
            create_model("dinat-tiny", attention=name)


@pytest.mark.parametrize("attention", ["neighborhood", "softmax"])
def test_dinat_learns_digits_with_two_kernels(attention):
    body = create_model("dinat-tiny", attention=attention, image_size=8, num_channels=1)  # grids 2x2, 1x1
    assert digits_loss_ratio(body, steps=150, lr=3e-3) < 0.7


def test_neighbourhood_blocks_learn_nat_relative_position_bias_unless_turned_off():
    model = create_model("dinat-tiny")
    kernels = [b.attn.kernel for s in model.stages for b in s.blocks]
    assert [tuple(k.rel_bias.shape) for k in kernels] == [(2, 5, 5)] * 2 + [(4, 5, 5)] * 2  # (heads, 2k-1, 2k-1), k=3
    plain = create_model("dinat-tiny", attention_options={"relative_bias": False})
    assert plain.stages[0].blocks[0].attn.kernel.rel_bias is None
