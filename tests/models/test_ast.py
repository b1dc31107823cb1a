"""AST: patches in frequency-major order, the two prefix tokens, any kernel on the patch grid, learning tones."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention.capabilities import CapabilityError
from attnlab.data.audio import fbank
from attnlab.models import create_model

from classifykit import held_out_accuracy


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
    with pytest.raises(ValueError, match="smaller than one patch of 8 frames x 8 mel bins"):
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
    assert held_out_accuracy(model, _tones(256, 0), _tones(128, 1), steps=60) > 0.9


def _passt(**kw):
    return create_model("ast-tiny", axis_positions=True, patchout=[2, 4, 0], **kw)


def test_patchout_token_counts_in_training_and_none_in_eval():
    model = create_model("ast-tiny", patchout=[2, 4, 5])
    x, grid = model.embed(torch.randn(2, 64, 32))
    assert x.shape[1] == (5 - 2) * (10 - 4) - 5 + 2 and grid is None
    model = _passt()
    x, grid = model.embed(torch.randn(2, 64, 32))
    assert x.shape[1] == 3 * 6 + 2 and grid == (3, 6)
    model.eval()
    x, grid = model.embed(torch.randn(2, 64, 32))
    assert x.shape[1] == 52 and grid == (5, 10)


def test_eval_ignores_patchout_and_axis_positions_equal_a_separable_table():
    torch.manual_seed(0)
    passt = _passt().eval()
    ast = create_model("ast-tiny").eval()
    state = {k: v for k, v in passt.state_dict().items() if "pos" not in k}
    ast.load_state_dict(state, strict=False)
    e = passt.embed
    table = (e.freq_pos + e.time_pos).flatten(2).transpose(1, 2)            # pos[f, t] = E_f[f] + E_t[t]
    with torch.no_grad():
        ast.embed.pos_emb.copy_(torch.cat([e.tok_pos, table], dim=1))
    spec = torch.randn(2, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(ast(spec), passt(spec), rtol=1e-5, atol=1e-5)


def test_kept_patches_carry_their_own_positions_and_draws_are_reproducible():
    model = _passt(pooling="mean", max_seq_len=50)
    e = model.embed
    with torch.no_grad():
        e.proj.weight.zero_(), e.proj.bias.zero_()                          # tokens are their positions alone
    e.generator = torch.Generator().manual_seed(3)
    x, _ = e(torch.randn(1, 64, 32))
    rows, cols, _ = e.kept
    want = (e.freq_pos[0, :, rows, 0][:, :, None] + e.time_pos[0, :, 0, cols][:, None, :]).flatten(1).t()
    torch.testing.assert_close(x[0], want)
    e.generator = torch.Generator().manual_seed(3)
    again, _ = e(torch.randn(1, 64, 32))
    assert torch.equal(again, x) and e.kept[0].tolist() == rows.tolist()


def test_patchout_errors_and_kernels():
    with pytest.raises(ValueError, match="leaves no patch of the 5 x 10 grid"):
        create_model("ast-tiny", patchout=[5, 0, 0])
    with pytest.raises(ValueError, match=r"\[frequency rows, time columns, random patches\]"):
        create_model("ast-tiny", patchout=[1, 1])
    with pytest.raises(CapabilityError, match="unstructured patchout leaves a sequence"):
        create_model("ast-tiny", pooling="mean", max_seq_len=50, attention="axial", patchout=[0, 0, 3])
    model = create_model("ast-tiny", pooling="mean", max_seq_len=50, attention="axial", patchout=[1, 2, 0])
    assert torch.isfinite(model.classify(torch.randn(2, 64, 32))).all()      # axial on the smaller 4 x 8 grid
