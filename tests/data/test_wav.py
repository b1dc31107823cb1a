"""WAV reading (PCM 8/16/24/32-bit, float, stereo, extensible), resampling against analytic sines, SpecAugment
masking, and the one-line errors for bad audio files."""

from __future__ import annotations

import math
import struct
import wave

import numpy as np
import pytest
import torch

from attnlab.data.audio import read_wav, resample, spec_augment


def _pcm(path, samples: np.ndarray, width: int, rate: int = 16000, channels: int = 1):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def _float_wav(path, samples: np.ndarray, rate: int = 16000, extensible: bool = False):
    data = samples.astype(np.float32).tobytes()
    if extensible:  # WAVE_FORMAT_EXTENSIBLE: the sub-format GUID starts with 3 (float)
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, rate, rate * 4, 4, 32, 22, 32, 0) + struct.pack("<H", 3) + bytes(14)
    else:
        fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_pcm_widths_and_stereo(tmp_path):
    x = np.sin(np.linspace(0, 20, 800)) * 0.5
    for width, kind, scale in ((2, np.int16, 32768), (4, np.int32, 2 ** 31)):
        wave_, rate = read_wav(_pcm(tmp_path / f"{width}.wav", (x * scale).astype(kind), width))
        assert rate == 16000 and np.allclose(wave_.numpy(), x, atol=2 / 32768)
    u8 = ((x + 1) * 128).clip(0, 255).astype(np.uint8)
    assert np.allclose(read_wav(_pcm(tmp_path / "8.wav", u8, 1))[0].numpy(), x, atol=2 / 128)
    v = (x * 2 ** 23).astype(np.int32)
    b24 = np.stack([v & 255, (v >> 8) & 255, (v >> 16) & 255], 1).astype(np.uint8)
    assert np.allclose(read_wav(_pcm(tmp_path / "24.wav", b24, 3))[0].numpy(), x, atol=2 / 2 ** 23)
    stereo = np.stack([(x * 32767).astype(np.int16), np.zeros(800, np.int16)], 1)
    assert np.allclose(read_wav(_pcm(tmp_path / "st.wav", stereo, 2, channels=2))[0].numpy(), x / 2, atol=1e-4)


def test_float_and_extensible_wavs(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, 500).astype(np.float32)
    for ext in (False, True):
        got, rate = read_wav(_float_wav(tmp_path / f"f{ext}.wav", x, 8000, ext))
        assert rate == 8000 and np.array_equal(got.numpy(), x)


@pytest.mark.parametrize("old, new, freq, tol", [(8000, 16000, 440.0, 1e-5), (16000, 8000, 1000.0, 1e-4),
                                                 (44100, 16000, 3000.0, 1e-3), (16000, 22050, 500.0, 1e-5)])
def test_resampling_a_sine_gives_the_sine_at_the_new_rate(old, new, freq, tol):
    x = torch.sin(2 * math.pi * freq * torch.arange(old, dtype=torch.float64) / old)
    y = resample(x, old, new)
    want = torch.sin(2 * math.pi * freq * torch.arange(y.shape[0], dtype=torch.float64) / new)
    assert y.shape[0] == new and (y - want)[200:-200].abs().max() < tol


def test_resampling_removes_what_the_new_rate_cannot_hold_and_keeps_batches():
    x = torch.sin(2 * math.pi * 7000 * torch.arange(16000, dtype=torch.float64) / 16000)
    assert resample(x, 16000, 8000)[200:-200].abs().max() < 1e-3       # 7 kHz is above 8 kHz's Nyquist
    batch = torch.randn(3, 1000)
    torch.testing.assert_close(resample(batch, 16000, 12000), torch.stack([resample(r, 16000, 12000) for r in batch]))


def test_spec_augment_masks_one_band_per_axis_reproducibly():
    spec = torch.ones(4, 50, 20)
    out = spec_augment(spec, freq_mask=8, time_mask=10, generator=torch.Generator().manual_seed(0))
    again = spec_augment(spec, freq_mask=8, time_mask=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and torch.equal(spec, torch.ones(4, 50, 20))
    for row in out:
        bins = (row == 0).all(0).sum().item()
        frames = (row == 0).all(1).sum().item()
        assert bins < 8 and frames < 10
        assert (row == 0).sum().item() == bins * 50 + frames * 20 - bins * frames
    with pytest.raises(ValueError, match="do not fit 20 bins"):
        spec_augment(spec, freq_mask=30)


def test_bad_audio_files_are_one_line(tmp_path):
    (tmp_path / "notes.wav").write_text("not audio at all")
    cases = [(tmp_path / "missing.wav", "does not exist"), (tmp_path / "notes.wav", "is not a WAV file"),
             (_pcm(tmp_path / "empty.wav", np.zeros(0, np.int16), 2), "holds no samples"),
             (_pcm(tmp_path / "silent.wav", np.zeros(400, np.int16), 2), "is silent")]
    odd = tmp_path / "odd.wav"
    _float_wav(odd, np.ones(10, np.float32))
    raw = bytearray(odd.read_bytes())
    raw[34:36] = struct.pack("<H", 16)  # float samples of 16 bits: not a format
    odd.write_bytes(bytes(raw))
    cases.append((odd, "float samples of 16 bits are not supported"))
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            read_wav(path)
