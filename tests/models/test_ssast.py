"""SSAST: the cluster mask sampler, the two losses in closed form, masking before the positions, a pretraining run
whose losses fall, and fine-tuning from the pretrained encoder."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.models import create_model
from attnlab.models.audio.ssast import MaskedSpectrogramModel, discriminative_loss, mask_clusters

TINY = dict(patch_stride=None, pooling="cls", max_seq_len=34, num_classes=0)  # ast-tiny, 4 x 8 patches, no head


def test_mask_sampler_draws_exactly_m_distinct_indices_from_clusters():
    g = torch.Generator().manual_seed(0)
    masked = mask_clusters(16, (8, 64), 400, g)
    assert masked.shape == (16, 400)
    for row in masked:
        assert len(set(row.tolist())) == 400 and row.min() >= 1 and row.max() < 512
    few = mask_clusters(1, (8, 64), 9, torch.Generator().manual_seed(3), cluster=(3, 3))[0]
    assert len(few) == 9  # at least one whole 3x3 cluster was grown before the cut
    with pytest.raises(ValueError, match="must be in 1..510"):
        mask_clusters(1, (8, 64), 511)


def test_discriminative_loss_limits_and_generative_loss_of_a_perfect_reconstruction():
    x = torch.randn(2, 6, 16)
    equal, acc = discriminative_loss(x, torch.zeros_like(x))
    assert equal.item() == pytest.approx(math.log(6), abs=1e-6)                 # all scores equal: log M
    perfect, acc = discriminative_loss(torch.eye(6).expand(2, 6, 6), 100 * torch.eye(6).expand(2, 6, 6))
    assert perfect.item() < 1e-6 and acc.item() == 1.0
    torch.manual_seed(0)
    model = MaskedSpectrogramModel(create_model("ast-tiny", **TINY), mask_patches=10)
    spec = torch.randn(2, 64, 32)
    masked = mask_clusters(2, (4, 8), 10, torch.Generator().manual_seed(1))
    target = model.targets(spec).gather(1, masked[..., None].expand(-1, -1, 64))
    last = model.gpred[2]
    with torch.no_grad():  # a head that outputs the target exactly: zero weights, the target as bias (one clip)
        last.weight.zero_(), last.bias.copy_(target[0, 0])
    _, metrics = model(spec[:1], masked[:1, :1])
    assert metrics["generative_loss"].item() == pytest.approx(0.0, abs=1e-10)


def test_masked_patches_become_the_mask_embedding_before_the_positions():
    model = MaskedSpectrogramModel(create_model("ast-tiny", **TINY), mask_patches=5)
    seen = {}
    real = model.encoder.embed.assemble
    model.encoder.embed.assemble = lambda x: seen.setdefault("x", x) is not None and real(x)
    spec = torch.randn(1, 64, 32)
    masked = torch.tensor([[1, 2, 9, 10, 30]])
    model(spec, masked)
    tokens = seen["x"].flatten(2).transpose(1, 2)[0]
    patches = model.encoder.embed.patches(spec).flatten(2).transpose(1, 2)[0]
    keep = torch.ones(32, dtype=torch.bool)
    keep[masked[0]] = False
    assert torch.equal(tokens[masked[0]], model.mask_embed[0].expand(5, -1))
    torch.testing.assert_close(tokens[keep], patches[keep])


def _pretrain(model, spec, steps: int = 60):
    """The metrics before and after ``steps`` Adam steps on one batch of clips."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = model(spec)[1]
    for _ in range(steps):
        loss, metrics = model(spec)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, metrics


def test_pretraining_lowers_both_losses_and_the_encoder_fine_tunes():
    torch.manual_seed(0)
    model = MaskedSpectrogramModel(create_model("ast-tiny", **TINY), mask_patches=12)
    model.generator = torch.Generator().manual_seed(0)
    base = torch.randn(1, 64, 32)
    spec = base + 0.1 * torch.randn(32, 64, 32)  # structured clips: one pattern plus noise
    first, metrics = _pretrain(model, spec)
    assert metrics["generative_loss"] < 0.5 * first["generative_loss"]
    assert metrics["discriminative_loss"] < first["discriminative_loss"]
    tuned = create_model("ast-tiny", **{**TINY, "num_classes": 3})
    missing, unexpected = tuned.load_state_dict(model.encoder.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"}


def test_bad_settings():
    with pytest.raises(ValueError, match="non-overlapping patches"):
        MaskedSpectrogramModel(create_model("ast-tiny"), mask_patches=5)
    with pytest.raises(ValueError, match="must be in 1..30"):
        MaskedSpectrogramModel(create_model("ast-tiny", **TINY), mask_patches=31)


FRAMES = dict(TINY, patch_shape=[32, 2], max_seq_len=34)  # ast-tiny with frame patches: 32 mel bins x 2 frames


def test_frame_patches_are_every_mel_bin_of_two_frames():
    torch.manual_seed(0)
    model = MaskedSpectrogramModel(create_model("ast-tiny", **FRAMES), mask_patches=20)
    assert model.encoder.grid == (1, 32)
    spec = torch.randn(2, 64, 32)                                     # (batch, frames, mel bins)
    want = torch.stack([spec[:, 2 * t:2 * t + 2].transpose(1, 2).reshape(2, 64) for t in range(32)], dim=1)
    torch.testing.assert_close(model.targets(spec), want)             # patch t: mel-major, frames 2t and 2t+1
    conv = model.encoder.embed.proj                                   # one token per frame pair, all mel bins
    assert tuple(conv.kernel_size) == (32, 2) and tuple(conv.stride) == (32, 2)
    token = model.encoder.embed.patches(spec)[:, :, 0, 5]             # (B, dim): the patch of frames 10 and 11
    direct = torch.einsum("bft,dft->bd", spec[:, 10:12].transpose(1, 2), conv.weight[:, 0]) + conv.bias
    torch.testing.assert_close(token, direct, atol=1e-5, rtol=1e-5)
    masked = mask_clusters(4, (1, 32), 20, torch.Generator().manual_seed(0))
    assert all(len(set(r.tolist())) == 20 for r in masked)            # the clusters become runs of frames


def test_frame_pretraining_lowers_the_loss_and_feeds_a_frame_ast():
    torch.manual_seed(0)
    model = MaskedSpectrogramModel(create_model("ast-tiny", **FRAMES), mask_patches=16)
    model.generator = torch.Generator().manual_seed(0)
    spec = torch.randn(1, 64, 32) + 0.1 * torch.randn(32, 64, 32)
    first, metrics = _pretrain(model, spec)
    assert metrics["generative_loss"] < 0.5 * first["generative_loss"]
    tuned = create_model("ast-tiny", **{**FRAMES, "num_classes": 3})
    missing, unexpected = tuned.load_state_dict(model.encoder.state_dict(), strict=False)
    assert not unexpected and len(missing) == 4 and tuned.classify(spec[:2]).shape == (2, 3)


def test_frame_patch_settings_are_checked():
    with pytest.raises(ValueError, match=r"patch_shape is \[frequency, time\]"):
        create_model("ast-tiny", patch_shape=[32])
    with pytest.raises(ValueError, match="smaller than one patch of 2 frames x 64 mel bins"):
        create_model("ast-tiny", **{**FRAMES, "patch_shape": [64, 2]})
    with pytest.raises(ValueError, match=r"must equal the patch size \[32, 2\]"):
        MaskedSpectrogramModel(create_model("ast-tiny", **{**FRAMES, "patch_stride": [32, 1], "max_seq_len": 70}), 5)
