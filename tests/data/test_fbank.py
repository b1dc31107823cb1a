"""The Kaldi-compatible filterbank against two references made at test time: transformers' ASTFeatureExtractor
(its numpy Kaldi path, AST's settings: 128 bins, Hann window) and kaldi-native-fbank (Kaldi's C++ port)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.data.audio import fbank, num_frames


def _chirp(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    t = torch.arange(int(16000 * seconds), dtype=torch.float64) / 16000
    noise = torch.randn(t.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (0.5 * torch.sin(2 * np.pi * (200 + 3000 * t) * t) + 0.01 * noise).float()


def test_ast_settings_equal_transformers_feature_extractor():
    transformers = pytest.importorskip("transformers")
    wave = _chirp()
    extractor = transformers.ASTFeatureExtractor(do_normalize=False, max_length=98)
    ref = extractor(wave.numpy(), sampling_rate=16000, return_tensors="pt")["input_values"][0]
    ours = fbank(wave)
    assert ours.shape == (98, 128) == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bins, window", [(80, "povey"), (64, "hanning"), (40, "povey")])
def test_kaldi_native_fbank(bins, window, dtype):
    """Kaldi computes in float32: in float64 we are within 1e-3 on all but the quietest bins, 5e-3 everywhere, 1e-4
    on average; in float32 both sides round, and the quietest bins (energies ~1e-5 of the frame's loudest) differ
    up to ~1e-2."""
    knf = pytest.importorskip("kaldi_native_fbank", reason="kaldi-native-fbank (pip) is the Kaldi reference")
    wave = _chirp(1.3, seed=1) * 32768  # Kaldi's int16 scale
    opts = knf.FbankOptions()
    opts.frame_opts.dither, opts.frame_opts.window_type, opts.mel_opts.num_bins = 0.0, window, bins
    online = knf.OnlineFbank(opts)
    online.accept_waveform(16000, wave.tolist())
    online.input_finished()
    ref = torch.tensor(np.array([online.get_frame(i) for i in range(online.num_frames_ready)]))
    ours = fbank(wave, num_mel_bins=bins, window=window, dtype=dtype)
    assert ours.shape == ref.shape == (num_frames(len(wave)), bins)
    diff = (ours - ref).abs()
    worst, tail = (5e-3, 1e-3) if dtype == torch.float64 else (1.5e-2, 3e-3)
    assert diff.max() < worst and diff.mean() < 1e-4 and torch.quantile(diff.flatten(), 0.999) < tail


def test_float32_path_stays_near_the_float64_one():
    waves = torch.stack([_chirp(seed=s) for s in range(3)])
    diff = (fbank(waves, dtype=torch.float32) - fbank(waves)).abs()
    assert diff.max() < 1e-2 and diff.mean() < 1e-4 and torch.quantile(diff.flatten(), 0.999) < 1e-3
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        fbank(waves, dtype=torch.float16)


def test_batched_equals_one_by_one_and_frame_count():
    waves = torch.stack([_chirp(seed=s) for s in range(3)])
    torch.testing.assert_close(fbank(waves), torch.stack([fbank(w) for w in waves]))
    assert [num_frames(n) for n in (399, 400, 559, 560, 16000, 160000)] == [0, 1, 1, 2, 98, 998]


def test_bad_waveforms_are_one_line():
    with pytest.raises(ValueError, match="shorter than one 25 ms frame"):
        fbank(torch.zeros(300))
    with pytest.raises(ValueError, match="NaN or infinity"):
        fbank(torch.full((800,), float("nan")))
    with pytest.raises(ValueError, match=r"expected a waveform \(samples,\)"):
        fbank(torch.zeros(1, 1, 800))
    with pytest.raises(ValueError, match="'hanning' or 'povey'"):
        fbank(torch.zeros(800), window="hamming")
