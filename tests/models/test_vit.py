"""Vision Transformer family: shapes, [CLS] vs mean pooling, the grid in the attention context, errors."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention import CapabilityError, list_attention
from attnlab.models import create_model, model_config
from attnlab.models.vision.vit import ViT


def _grids_seen(model: ViT, pixels: torch.Tensor) -> list:
    seen = []
    hooks = [b.attn.kernel.register_forward_pre_hook(lambda m, args: seen.append((args[0].shape[2], args[3].grid)))
             for b in model.blocks]
    model(pixels)
    for h in hooks:
        h.remove()
    return seen


def test_mean_pooled_vit_is_a_pure_grid():
    model = create_model("vit-tiny")
    pixels = torch.randn(2, 3, 32, 32)
    assert model(pixels).shape == (2, 64, 64)  # 8x8 patches, no [CLS]
    assert _grids_seen(model, pixels) == [(64, (8, 8))] * 2
    logits = model.classify(pixels)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(logits, model.head(model(pixels).mean(dim=1)))


def test_cls_vit_prepends_one_global_token():
    model = create_model("vit-tiny", pooling="cls", max_seq_len=65)
    pixels = torch.randn(2, 3, 32, 32)
    hidden = model(pixels)
    assert hidden.shape == (2, 65, 64)
    assert _grids_seen(model, pixels) == [(65, (8, 8))] * 2  # T = 1 + rows * cols
    torch.testing.assert_close(model.classify(pixels), model.head(hidden[:, 0]))


def test_patch_order_is_row_major():
    """Patch (r, c) becomes token r * cols + c: check against an explicit unfold of the image."""
    model = create_model("vit-tiny", position="none", dropout=0.0)
    pixels = torch.randn(1, 3, 32, 32)
    tokens = model.embed(pixels)  # (1, 64, 64)
    patches = pixels.unfold(2, 4, 4).unfold(3, 4, 4)  # (1, 3, 8, 8, 4, 4)
    r, c = 2, 5
    expected = torch.einsum("dchw,chw->d", model.embed.proj.weight, patches[0, :, r, c]) + model.embed.proj.bias
    torch.testing.assert_close(tokens[0, r * 8 + c], expected, atol=1e-5, rtol=1e-5)


def test_trains_end_to_end():
    model = create_model("vit-tiny", num_layers=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pixels, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model.classify(pixels), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.embed.proj.weight.grad is not None and model.embed.pos_emb.grad is not None


@pytest.mark.parametrize("kernel, options", [("neighborhood", {"kernel_size": 3}), ("axial", {})])
def test_grid_kernels_run_on_the_patch_grid(kernel, options):
    if kernel not in list_attention():
        pytest.skip(f"{kernel} is not registered")
    model = create_model("vit-tiny", attention=kernel, attention_options=options)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64, 64)


def test_bad_inputs_are_named():
    model = create_model("vit-tiny")
    with pytest.raises(ValueError, match=r"\(batch, 3, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        ViT(model_config("vit-tiny", image_size=30))
    with pytest.raises(ValueError, match="set max_seq_len=65"):
        ViT(model_config("vit-tiny", pooling="cls"))
    with pytest.raises(ValueError, match="position 'learned' or 'none'"):
        ViT(model_config("vit-tiny", position="rope"))
    with pytest.raises(ValueError, match="no classification head"):
        create_model("vit-tiny", num_classes=0).classify(torch.randn(1, 3, 32, 32))


def test_fashion_preset_takes_grayscale_28px():
    model = create_model("vit-fashion")
    assert model.grid == (7, 7) and model.classify(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vit_with_a_class_token_refuses_grid_kernels_at_build():
    with pytest.raises(CapabilityError, match=r"attention 'neighborhood' cannot place the ViT's \[CLS\] token on the "
                                              r"8x8 patch grid .* build the ViT with pooling='mean' .* prefix tokens: "
                                              r"\[.*'softmax'.*\]"):
        create_model("vit-tiny", pooling="cls", max_seq_len=65, attention="neighborhood")
    model = create_model("vit-tiny", pooling="cls", max_seq_len=65, attention="linear")  # no grid needed: builds
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 65, 64)
