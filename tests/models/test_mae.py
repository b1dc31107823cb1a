"""Masked autoencoder pretraining on the ViT family (He et al. 2022)."""

from __future__ import annotations

import pytest
import torch

from attnlab.models import model_config
from attnlab.models.vision.mae import MaskedAutoencoder, patchify, unpatchify
from attnlab.viz.images import save_image_grid


def mae(ratio=0.75, norm_pix_loss=True, **overrides) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(model_config("vit-tiny", **overrides), mask_ratio=ratio, norm_pix_loss=norm_pix_loss)


def images(B=4, seed=0):
    return torch.randn(B, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_patchify_round_trips():
    x = images()
    assert patchify(x, 4).shape == (4, 64, 48)
    assert torch.equal(unpatchify(patchify(x, 4), 4, 3, 8), x)
    assert torch.equal(patchify(x, 4)[0, 9].view(4, 4, 3).permute(2, 0, 1), x[0, :, 4:8, 4:8])  # patch (1, 1)


@pytest.mark.parametrize("ratio", [0.25, 0.75, 0.9])
def test_masks_exactly_the_ratio(ratio):
    m = mae(ratio)
    ids_keep, mask = m.random_masking(16, generator=torch.Generator().manual_seed(1))
    assert (mask.sum(1) == 64 - int(64 * (1 - ratio))).all()
    assert not mask.gather(1, ids_keep).any()  # kept patches are exactly the unmasked ones
    assert len({tuple(r) for r in mask.tolist()}) > 1  # a different subset per image


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encoder_never_reads_masked_pixels(pooling):
    m = mae(pooling=pooling, max_seq_len=65).eval()
    x = images()
    ids_keep, mask = m.random_masking(4, generator=torch.Generator().manual_seed(2))
    latent = m.encode_visible(x, ids_keep)
    assert latent.shape == (4, 16 + (pooling == "cls"), 64)
    poisoned = patchify(x, 4).masked_fill(mask[..., None], 1e4)
    torch.testing.assert_close(m.encode_visible(unpatchify(poisoned, 4, 3, 8), ids_keep), latent)


def test_loss_counts_only_masked_patches():
    m = mae()
    x = images()
    g = torch.Generator().manual_seed(3)
    loss, pred, mask = m(x, g)
    target = m.targets(x)
    expected = ((pred - target) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(loss, expected)
    assert torch.allclose(target.mean(-1), torch.zeros(4, 64), atol=1e-5)  # per-patch normalised


def test_pretraining_lowers_the_loss_and_writes_reconstructions(tmp_path):
    m = mae(0.5, norm_pix_loss=False)  # raw pixels: smooth images are predictable from neighbouring patches
    g = torch.Generator().manual_seed(0)
    # smooth images (low-frequency patterns): masked patches are predictable from their neighbours
    yy, xx = torch.meshgrid(torch.linspace(0, 3, 32), torch.linspace(0, 3, 32), indexing="ij")
    def batch():
        f = torch.rand(16, 3, 1, 1, generator=g) * 2 + 0.5
        return torch.sin(f * xx + torch.rand(16, 3, 1, 1, generator=g) * 6) * torch.cos(f * yy)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    held_out = batch()
    with torch.no_grad():
        before = float(m(held_out, torch.Generator().manual_seed(9))[0])
    for _ in range(80):
        loss, _, _ = m(batch(), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(m(held_out, torch.Generator().manual_seed(9))[0])
    assert after < 0.7 * before, (before, after)
    shown, filled = m.reconstruct(held_out[:4], torch.Generator().manual_seed(1))
    png = save_image_grid({"masked": shown, "reconstruction": filled, "original": held_out[:4]}, tmp_path / "mae.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_bad_arguments():
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        mae(1.0)
    with pytest.raises(ValueError, match="rows must all be images"):
        save_image_grid({"x": torch.zeros(2, 5, 8, 8)}, "unused.png")


def test_a_grid_kernel_in_the_encoder_is_refused_naming_the_kernels_that_can():
    """The visible patches are a random subset with no grid: a grid kernel would run over them as a 1-D row."""
    from attnlab.attention import CapabilityError
    from attnlab.models import model_config
    from attnlab.models.vision.mae import MaskedAutoencoder

    with pytest.raises(CapabilityError, match=r"sees 16 randomly chosen patches, which lie on no grid, so attention "
                                              r"\['neighborhood'\] cannot place them; kernels that can: \[.*'softmax'"):
        MaskedAutoencoder(model_config("vit-tiny", attention="neighborhood"))
    assert MaskedAutoencoder(model_config("vit-tiny", attention="sliding_window")).num_visible == 16


@pytest.mark.parametrize("preset, field", [("swin-tiny", "depths"), ("t2t-vit-tiny", "stage_embed"),
                                           ("convit-tiny", "local_layers")])
def test_a_config_of_another_vision_family_is_refused(preset, field):
    with pytest.raises(ValueError, match=rf"wraps a plain ViT config .* this one has {field}="):
        MaskedAutoencoder(model_config(preset, attention="softmax"))
