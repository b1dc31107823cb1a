"""TNT: the word count, the official smallest's size, with the fuse switched off the outer path is a plain ViT chain on
the first sentence tokens, words of one patch do not see other patches, kernels inside and outside, and it trains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab.attention import CapabilityError
from attnlab.attention.context import AttentionContext
from attnlab.models import create_model
from imagekit import digits_loss_ratio


def test_word_count_and_the_official_smallest_size():
    model = create_model("tnt-s")
    assert model.words_side ** 2 == 16 and model.grid == (14, 14)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 23.8e6) / 23.8e6 < 0.02, n  # the paper's 23.8M (q/k/v biases here; the reference has none)


def test_without_the_fuse_the_outer_path_is_a_plain_vit_chain():
    torch.manual_seed(0)
    model = create_model("tnt-tiny").eval()
    for block in model.blocks:
        nn.init.zeros_(block.fuse.proj.weight), nn.init.zeros_(block.fuse.proj.bias)
        nn.init.zeros_(block.fuse.norm2.bias)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = model.sentence(model.words(x), 2)
        z = torch.cat([model.cls_token.expand(2, -1, -1), z], dim=1) + model.patch_pos
        for block in model.blocks:
            z = block.outer(z, AttentionContext(causal=False, grid=model.grid))
        torch.testing.assert_close(model(x), model.norm(z), atol=1e-5, rtol=1e-4)


def test_words_of_one_patch_do_not_see_other_patches():
    torch.manual_seed(0)
    model = create_model("tnt-tiny").eval()
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[:, :, 8:16, 16:24] += 1.0  # change one patch (row 1, column 2 of the 4x4 grid)
    with torch.no_grad():
        ctx = AttentionContext(causal=False, grid=(model.words_side,) * 2)
        wx, wy = (model.blocks[0].inner(model.words(t), ctx) for t in (x, y))
    changed = (wx - wy).abs().flatten(1).amax(1) > 1e-6
    assert changed.nonzero().flatten().tolist() == [1 * 4 + 2]


def test_kernels_inside_and_outside_and_the_class_token():
    out = create_model("tnt-tiny", token_attention="linear", attention="sliding_window").eval()(
        torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 17, 32) and torch.isfinite(out).all()
    with pytest.raises(CapabilityError, match="cannot place the TNT's \\[CLS\\] token.*pooling='mean'"):
        create_model("tnt-tiny", attention="neighborhood", attention_options={"kernel_size": 3})
    with pytest.raises(CapabilityError, match="cannot serve TNT's inner blocks on the 2x2 grid of words"):
        create_model("tnt-tiny", token_attention="neighborhood", token_attention_options={"kernel_size": 3})
    assert create_model("tnt-tiny", pooling="mean", attention="neighborhood",
                        attention_options={"kernel_size": 3}).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 16, 32)


def test_bad_input_gets_one_clear_line():
    with pytest.raises(ValueError, match="not divisible by patch_size=5"):
        create_model("tnt-tiny", patch_size=5)
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, 32, 32\)"):
        create_model("tnt-tiny")(torch.randn(1, 3, 28, 28))


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_tnt_learns_digits_with_two_kernels(attention):
    body = create_model("tnt-tiny", attention=attention, image_size=8, patch_size=2, num_channels=1, inner_stride=1,
                        pooling="mean", max_seq_len=16)
    assert digits_loss_ratio(body, steps=200, lr=2e-3) < 0.75
