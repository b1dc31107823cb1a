"""SReT: shared blocks (parameters independent of the loops), a looped model equals the unshared one with copied
weights, sliced attention equals block-diagonal dense attention after the shuffle and puts tokens back exactly,
grid kernels on unshuffled slices, the wide and deep presets, bad input, and it trains."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import CapabilityError
from attnlab.attention.context import AttentionContext
from attnlab.attention.reference import reference_attention
from attnlab.attention.shell import MultiHeadAttention
from attnlab.models import create_model
from attnlab.models.vision.sret import SlicedAttention
from imagekit import digits_loss_ratio


def test_parameters_do_not_grow_with_the_loops_and_the_official_smallest_size():
    two = create_model("sret-tiny", depths=[2, 2], loops=2)
    four = create_model("sret-tiny", depths=[4, 4], loops=4)
    nll = sum(p.numel() for s in four.stages for p in s.nlls.parameters())
    assert sum(p.numel() for p in four.parameters()) - nll == sum(p.numel() for p in two.parameters()) - \
        sum(p.numel() for s in two.stages for p in s.nlls.parameters())
    n = sum(p.numel() for p in create_model("sret-t").parameters())
    assert abs(n - 4.8e6) / 4.8e6 < 0.05, n


def test_a_looped_model_equals_the_unshared_model_with_copied_weights():
    torch.manual_seed(0)
    kw = dict(groups=[2, 1], recursive_groups=[2, 1])  # no shuffle in eval: the applications see the same slices
    looped = create_model("sret-tiny", loops=2, **kw).eval()
    unshared = create_model("sret-tiny", loops=1, **kw).eval()
    state = {}
    for name, value in looped.state_dict().items():
        parts = name.split(".")
        if parts[0] == "stages" and parts[2] == "blocks":
            for copy in range(2):  # unique block r runs as applications 2r and 2r + 1
                state[".".join(parts[:3] + [str(2 * int(parts[3]) + copy)] + parts[4:])] = value
        else:
            state[name] = value
    unshared.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(unshared(x), looped(x), atol=1e-5, rtol=1e-4)
    assert len(looped.stages[0].blocks) == 1 and len(unshared.stages[0].blocks) == 2


def test_sliced_attention_is_block_diagonal_dense_attention_after_the_shuffle():
    torch.manual_seed(0)
    shell = MultiHeadAttention(8, 2, kernel="softmax").eval()
    sliced = SlicedAttention(shell)
    x, perm = torch.randn(2, 12, 8), torch.randperm(12)
    out = sliced(x, (3, 4), groups=3, perm=perm)
    xp = x[:, perm]
    q, k, v = shell.project(xp, None)
    group = torch.arange(12) // 4
    keep = (group[:, None] == group[None, :])[None, None]
    dense, _ = reference_attention(q, k, v, keep=keep, scale=4 ** -0.5)  # head width 8 / 2
    expected = shell.out_proj(dense.transpose(1, 2).reshape(2, 12, 8))
    torch.testing.assert_close(out[:, perm], expected, atol=1e-5, rtol=1e-4)  # back in the original order
    identity = sliced(x, (3, 4), groups=1, perm=torch.arange(12))
    torch.testing.assert_close(identity, sliced(x, (3, 4), groups=1, perm=None), atol=0, rtol=0)


def test_shuffles_only_in_training_unless_asked():
    torch.manual_seed(0)
    model = create_model("sret-tiny").eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x), model(x))
    shuffled = create_model("sret-tiny", permute_in_eval=True).eval()
    shuffled.load_state_dict(model.state_dict())
    assert not torch.allclose(shuffled(x), model(x))


@pytest.mark.parametrize("shuffled", [False, True])
def test_attention_maps_cover_the_stage_grid_with_the_slices_on_the_diagonal(shuffled):
    """One (B, heads, N, N) map per application in grid order: each row a distribution over the N / G tokens of its
    own slice (contiguous when unshuffled, the shuffle's slices otherwise), zero elsewhere."""
    torch.manual_seed(0)
    model = create_model("sret-tiny", permute_in_eval=shuffled).eval()  # groups [2, 1]: stage 0 slices in halves
    maps = model.attention_maps(torch.randn(3, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(3, 2, 64, 64)] * 2 + [(3, 4, 16, 16)] * 2
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))
    support = maps[1][0, 0] > 0  # the second application of stage 0: shuffled when asked
    assert torch.equal(support, support.T) and (support.sum(-1) == 32).all()
    assert torch.equal(support.float() @ support.float(), 32 * support.float())  # slices: an equivalence
    halves = torch.arange(64)[:, None] // 32 == torch.arange(64)[None, :] // 32
    assert torch.equal(maps[0][0, 0] > 0, halves) and torch.equal(support, halves) != shuffled


def test_grid_kernels_serve_unshuffled_slices_only():
    out = create_model("sret-tiny", attention="axial", recursive_groups=[1, 1]).eval()(torch.randn(1, 3, 32, 32))
    assert torch.isfinite(out).all()  # axial attention on 4x8 slices of the 8x8 grid, then on the 4x4 grid
    with pytest.raises(CapabilityError, match=r"SReT stage 0: slices of 32 tokens with no grid .*kernels that can:"):
        create_model("sret-tiny", attention="axial")  # shuffled slices have no grid


def test_bad_configs_get_one_clear_line():
    with pytest.raises(ValueError, match="not divisible into 3 groups"):
        create_model("sret-tiny", groups=[3, 1])
    with pytest.raises(ValueError, match="multiple of loops=2"):
        create_model("sret-tiny", depths=[3, 2])
    with pytest.raises(ValueError, match="one entry per stage"):
        create_model("sret-tiny", groups=[2])


def test_wide_and_deep_presets_are_one_family():
    deep, wide = create_model("sret-fashion-deep"), create_model("sret-fashion-wide")
    assert [len(s.blocks) for s in deep.stages] == [2, 2, 1] and [len(s.blocks) for s in wide.stages] == [1, 1, 1]
    assert deep.dims == [32, 64, 128] and wide.dims == [64, 128, 256]


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_sret_learns_digits_with_two_kernels(attention):
    body = create_model("sret-tiny", attention=attention, image_size=8, num_channels=1,
                        stage_embed=[[3, 1, 1]], groups=[2, 1], recursive_groups=[2, 1])
    assert digits_loss_ratio(body, steps=150, lr=3e-3) < 0.6


def test_a_schedule_must_give_the_applications_of_a_shared_block_one_kernel():
    """num_layers counts applications (depths [2, 2], loops 2: four, from two shared blocks); an entry per
    application must repeat for the applications of one block, or the schedule would be silently cut."""
    model = create_model("sret-tiny", attention=["neighborhood", "neighborhood", "linear", "linear"])
    assert [b.attn.attn.kernel.name for s in model.stages for b in s.blocks] == ["neighborhood", "linear"]
    assert [b.attn.attn.kernel.name for s in create_model("sret-tiny", attention=["neighborhood", "linear"]).stages
            for b in s.blocks] == ["neighborhood", "linear"]  # one name per stage
    with pytest.raises(ValueError, match=r"stage 0's shared block 0 runs 2 times with one kernel .* \(layers 0..1\) "
                                         r"\['neighborhood', 'softmax'\]"):
        create_model("sret-tiny", attention=["neighborhood", "softmax", "linear", "axial"])
