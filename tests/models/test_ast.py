"""AST: patches in frequency-major order, the two prefix tokens, any kernel on the patch grid, learning tones."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention.capabilities import CapabilityError
from attnlab.data.audio import fbank
from attnlab.models import create_model


def test_grid_and_token_count_of_the_official_shape():
    model = create_model("ast-base")
    assert model.grid == (12, 101) and model.embed.num_tokens == 1214


def test_patch_tokens_are_frequency_major_and_see_only_their_receptive_field():
    model = create_model("ast-tiny").eval()
    spec = torch.zeros(1, 64, 32)
    base = model.embed.proj(spec.transpose(1, 2).unsqueeze(1)).flatten(2).transpose(1, 2)
    spec[0, 20, 13] = 1.0                                   # frame 20, mel bin 13
    moved = model.embed.proj(spec.transpose(1, 2).unsqueeze(1)).flatten(2).transpose(1, 2)
    changed = (moved - base).abs().sum(-1)[0] > 0
    F, T = model.grid
    want = [f * T + t for f in range(F) for t in range(T) if 6 * f <= 13 < 6 * f + 8 and 6 * t <= 20 < 6 * t + 8]
    assert torch.nonzero(changed).flatten().tolist() == want


def test_pooled_is_the_mean_of_class_and_distillation_tokens():
    model = create_model("ast-tiny").eval()
    spec = torch.randn(2, 64, 32)
    with torch.no_grad():
        h = model(spec)
        torch.testing.assert_close(model.pooled(spec), (h[:, 0] + h[:, 1]) / 2)
    assert h.shape == (2, 52, 32)


@pytest.mark.parametrize("name", ["neighborhood", "axial", "linear", "sliding_window"])
def test_grid_kernels_run_with_mean_pooling_or_are_refused_with_prefix_tokens(name):
    opts = {"kernel_size": 3} if name == "neighborhood" else {}
    try:
        create_model("ast-tiny", attention=name, attention_options=opts)
    except CapabilityError as e:
        assert "pooling='mean'" in str(e)
    model = create_model("ast-tiny", attention=name, attention_options=opts, pooling="mean", max_seq_len=50).eval()
    out = model.classify(torch.randn(2, 64, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_bad_spectrograms_are_one_line():
    model = create_model("ast-tiny")
    with pytest.raises(ValueError, match=r"expected spectrograms of shape \(batch, 64 frames, 32 mel bins\)"):
        model(torch.randn(2, 32, 64))
    with pytest.raises(ValueError, match="smaller than one 8x8 patch"):
        create_model("ast-tiny", frames=4)
    with pytest.raises(ValueError, match="set max_seq_len=52"):
        create_model("ast-tiny", max_seq_len=20)


def _tones(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure tones of 4 pitch classes (random phase and loudness) as 64-frame, 32-bin filterbanks."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    t = torch.arange(400 + 63 * 160) / 16000
    freq = torch.tensor([300.0, 700.0, 1500.0, 3000.0])[labels] * (1 + 0.03 * torch.rand(n, generator=g))
    wave = (0.1 + torch.rand(n, 1, generator=g)) * torch.sin(2 * torch.pi * freq[:, None] * t + torch.rand(n, 1, generator=g) * 6)
    spec = fbank(wave + 0.01 * torch.randn(wave.shape, generator=g), num_mel_bins=32)
    return (spec - spec.mean()) / (2 * spec.std()), labels


def test_ast_learns_tones_of_different_pitch():
    torch.manual_seed(0)
    model = create_model("ast-tiny", num_classes=4)
    x, y = _tones(256, 0)
    xt, yt = _tones(128, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(60):
        i = torch.randint(0, 256, (32,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(model.classify(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model.eval().classify(xt).argmax(-1) == yt).float().mean().item()
    assert acc > 0.9
