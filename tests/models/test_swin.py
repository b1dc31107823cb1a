"""Swin on the attention shell: patch merging order, the one-window limit equals global attention, every kernel
that can run bidirectionally serves every stage, unfit kernels are refused at build, and it trains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab.attention import CapabilityError, list_attention
from attnlab.models import create_model
from attnlab.models.vision.swin import PatchMerging
from imagekit import digits_loss_ratio


def test_patch_merging_concatenates_2x2_neighbourhoods_in_reference_order():
    C, rows, cols = 3, 4, 6
    y, x, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), torch.arange(C), indexing="ij")
    grid = (1000 * y + 10 * x + c).float().reshape(1, rows * cols, C)
    merge = PatchMerging(C, 1e-5)
    merge.norm, merge.reduction = nn.Identity(), nn.Identity()
    out = merge(grid, (rows, cols)).view(rows // 2, cols // 2, 4 * C)
    i, j = 1, 2
    for part, (dy, dx) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
        expected = 1000 * (2 * i + dy) + 10 * (2 * j + dx) + torch.arange(C)
        assert torch.equal(out[i, j, part * C:(part + 1) * C], expected.float())


@pytest.mark.parametrize("rows,cols", [(4, 6), (5, 6), (4, 7), (7, 7)])
def test_patch_merging_equals_the_sliced_reference_with_its_gradient(rows, cols):
    """The one-copy merge equals the reference's four strided slices and cat, values and input gradient, bit for
    bit (odd sides zero-padded first)."""
    torch.manual_seed(0)
    C = 5
    merge = PatchMerging(C, 1e-5)
    x = torch.randn(2, rows * cols, C, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    g = x_ref.view(2, rows, cols, C)
    g = nn.functional.pad(g, (0, 0, 0, cols % 2, 0, rows % 2))
    cat = torch.cat([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], dim=-1)
    ref = merge.reduction(merge.norm(cat.reshape(2, -1, 4 * C)))
    out = merge(x, (rows, cols))
    assert out.shape == (2, ((rows + 1) // 2) * ((cols + 1) // 2), 2 * C)
    assert torch.equal(out, ref)
    dy = torch.randn_like(out)
    out.backward(dy)
    ref.backward(dy)
    assert torch.equal(x.grad, x_ref.grad)


def test_one_window_covering_the_grid_with_zero_bias_is_global_attention():
    torch.manual_seed(0)
    kw = dict(image_size=16, patch_size=2, window_size=8, depths=[2], stage_heads=[2], num_classes=3)
    windowed = create_model("swin-tiny", attention="window", **kw).eval()
    dense = create_model("swin-tiny", attention="softmax", **kw).eval()
    state = {k: v for k, v in windowed.state_dict().items() if not k.endswith("rel_bias")}
    dense.load_state_dict(state)
    for block in windowed.stages[0].blocks:
        nn.init.zeros_(block.attn.kernel.rel_bias)
        assert block.attn.kernel.shift == 0  # an 8x8 grid in an 8-wide window: nothing to shift
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(windowed.classify(x), dense.classify(x), atol=1e-5, rtol=1e-4)


def test_shift_alternates_and_windows_clamp_per_stage():
    model = create_model("swin-tiny")  # grids 16x16 and 8x8, window 4
    kernels = [[b.attn.kernel for b in s.blocks] for s in model.stages]
    assert [[k.shift for k in ks] for ks in kernels] == [[0, 2], [0, 2]]
    small = create_model("swin-tiny", image_size=8)  # grids 4x4 and 2x2: one window each, no shift
    assert [[(b.attn.kernel.window, b.attn.kernel.shift) for b in s.blocks] for s in small.stages] == \
        [[((4, 4), 0)] * 2, [((2, 2), 0)] * 2]


@pytest.mark.parametrize("name", sorted(list_attention()))
def test_every_bidirectional_kernel_serves_every_stage(name):
    from attnlab.attention.registry import build_attention

    caps = build_attention(name, structural=dict(num_heads=2, num_kv_heads=2, head_dim=8, max_seq_len=256)).capabilities
    if not caps.bidirectional:
        with pytest.raises(CapabilityError, match="bidirectional"):
            create_model("swin-tiny", attention=name)
        return
    torch.manual_seed(0)
    model = create_model("swin-tiny", attention=name).eval()
    out = model.classify(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("attention", ["window", "neighborhood"])
def test_swin_learns_digits_with_two_kernels(attention):
    body = create_model("swin-tiny", attention=attention, image_size=8, patch_size=1, num_channels=1, window_size=4,
                        attention_options={"kernel_size": 3} if attention == "neighborhood" else {})
    assert digits_loss_ratio(body, steps=200, lr=3e-3) < 0.85


def test_attention_maps_per_block():
    model = create_model("swin-tiny").eval()
    maps = model.attention_maps(torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(1, 2, 256, 256)] * 2 + [(1, 4, 64, 64)] * 2
    w = maps[0][0, 0]
    assert torch.allclose(w.sum(-1), torch.ones(256)) and (w > 0).sum(-1).max() == 16  # a 4x4 window per query



def test_per_stage_schedules_expand_to_one_kernel_per_block():
    """One name per stage, or per block inside a stage's own list; the stored schedule is one name per block."""
    model = create_model("swin-tiny", attention=[["neighborhood", "window"], "axial"],
                         attention_options=[[{"kernel_size": 3}, {}], {}])
    kinds = [[b.attn.kernel.name for b in s.blocks] for s in model.stages]
    assert kinds == [["neighborhood", "window"], ["axial", "axial"]]
    assert model.cfg.attention == ["neighborhood", "window", "axial", "axial"]
    assert model.stages[0].blocks[0].attn.kernel.kernel_size == (3, 3)
    out = model.eval().classify(torch.randn(1, 3, 32, 32))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("attention, words", [
    (["neighborhood", "softmax", "axial"], "attention has 3 entries; give one per block (4: depths=[2, 2]) or "
                                           "one per stage (2)"),
    ([["neighborhood"], "axial"], "attention: stage 0 has 2 blocks (depths=[2, 2]) but its list has 1 entries")])
def test_a_schedule_of_another_length_names_both_accepted_lengths(attention, words):
    with pytest.raises(ValueError) as err:
        create_model("swin-tiny", attention=attention)
    assert words in str(err.value)


def test_the_window_kernels_size_comes_from_the_model_not_an_option():
    with pytest.raises(ValueError, match=r"Swin sets the window kernel's window_size \(from model.window_size=4, "
                                         r"clamped to small grids\) and shift .* remove \['window_size'\]"):
        create_model("swin-tiny", attention_options={"window_size": 2})
