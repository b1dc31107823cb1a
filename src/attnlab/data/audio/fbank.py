"""Kaldi-compatible log-mel filterbank features in torch, batched, on any device: the front end of AST and SSAST
(Gong, Chung & Glass 2021), equal to Kaldi's ``compute-fbank-feats`` with their settings.

Per frame (``frame_length`` ms, ``frame_shift`` ms, ``snip_edges``: only whole frames): remove the DC offset,
pre-emphasis ``x[i] -= 0.97 x[i-1]`` (``x[0] -= 0.97 x[0]``), a symmetric window (``hanning``:
``0.5 - 0.5 cos(2 pi n / (L - 1))``; ``povey``, Kaldi's default: that to the power 0.85), zero-padding to the next
power of two, the power spectrum, ``num_mel_bins`` triangular filters on Kaldi's mel scale ``1127 ln(1 + f / 700)``
from ``low_freq`` to ``high_freq`` (``<= 0``: that far below Nyquist), and ``log(max(energy, eps))``.
No dither (deterministic features).

Shapes: ``wave (B, N)`` or ``(N,)`` -> ``(B, frames, num_mel_bins)`` or ``(frames, num_mel_bins)``, with
``frames = 1 + (N - L) // shift``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

EPS = 1.1920929e-07  # Kaldi's floor: float32 machine epsilon


def num_frames(samples: int, sample_rate: int = 16000, frame_length: float = 25.0, frame_shift: float = 10.0) -> int:
    """Whole frames in ``samples`` (Kaldi's ``snip_edges=True``): ``1 + (samples - L) // shift``, 0 when shorter."""
    length, shift = int(sample_rate * frame_length / 1000), int(sample_rate * frame_shift / 1000)
    return 0 if samples < length else 1 + (samples - length) // shift


def _mel(f: Tensor) -> Tensor:
    return 1127.0 * torch.log1p(f / 700.0)


@functools.lru_cache(maxsize=16)
def mel_banks(num_bins: int, n_fft: int, sample_rate: int, low_freq: float, high_freq: float) -> Tensor:
    """``(num_bins, n_fft // 2 + 1)`` float64 triangles in mel space (Kaldi: no area normalisation; the Nyquist
    column is 0).

    Raises:
        ValueError: a frequency range that is empty or beyond Nyquist.
    """
    nyquist = sample_rate / 2
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0 <= low_freq < high <= nyquist:
        raise ValueError(f"mel filter range {low_freq}..{high} Hz does not fit 0..{nyquist} Hz (sample rate "
                         f"{sample_rate}); adjust low_freq / high_freq")
    mel_low, mel_high = _mel(torch.tensor(low_freq, dtype=torch.float64)), _mel(torch.tensor(high, dtype=torch.float64))
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + delta * torch.arange(num_bins, dtype=torch.float64)[:, None]
    center, right = left + delta, left + 2 * delta
    mel = _mel(sample_rate / n_fft * torch.arange(n_fft // 2, dtype=torch.float64))[None, :]
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.cat([banks, banks.new_zeros(num_bins, 1)], dim=1)


def _window(kind: str, length: int, device, dtype) -> Tensor:
    hann = torch.hann_window(length, periodic=False, device=device, dtype=dtype)
    if kind == "hanning":
        return hann
    if kind == "povey":
        return hann.pow(0.85)
    raise ValueError(f"window must be 'hanning' or 'povey', got {kind!r}")


def fbank(wave: Tensor, sample_rate: int = 16000, num_mel_bins: int = 128, frame_length: float = 25.0,
          frame_shift: float = 10.0, window: str = "hanning", preemphasis: float = 0.97, remove_dc: bool = True,
          low_freq: float = 20.0, high_freq: float = 0.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """Log-mel filterbank features (see the module docstring), returned as float32. ``dtype`` is the precision of
    the computation: float64 (the default) matches Kaldi and Hugging Face's ``ASTFeatureExtractor`` (numpy, float64)
    to ~1e-6; float32 is faster and stays within ~1e-3 of them (kaldi-native-fbank itself computes in float32).

    Raises:
        ValueError: not 1-D or 2-D, audio shorter than one frame, non-finite samples, a bad window or frequency range,
            a ``dtype`` other than float32 / float64.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    single = wave.dim() == 1
    if wave.dim() not in (1, 2):
        raise ValueError(f"expected a waveform (samples,) or a batch (batch, samples), got {tuple(wave.shape)}")
    x = wave[None] if single else wave
    length, shift = int(sample_rate * frame_length / 1000), int(sample_rate * frame_shift / 1000)
    if x.shape[-1] < length:
        raise ValueError(f"audio of {x.shape[-1]} samples is shorter than one {frame_length:g} ms frame "
                         f"({length} samples at {sample_rate} Hz); pad it or give a longer clip")
    if not torch.isfinite(x).all():
        raise ValueError("the waveform holds NaN or infinity")
    frames = x.to(dtype).unfold(-1, length, shift)  # (B, F, L)
    if remove_dc:
        frames = frames - frames.mean(-1, keepdim=True)
    if preemphasis:
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - preemphasis * prev
    frames = frames * _window(window, length, frames.device, frames.dtype)
    n_fft = 1 << math.ceil(math.log2(length))
    power = torch.fft.rfft(frames, n=n_fft).abs().pow(2)  # (B, F, n_fft // 2 + 1)
    banks = mel_banks(num_mel_bins, n_fft, sample_rate, float(low_freq), float(high_freq)).to(frames.device, dtype)
    feats = torch.log(torch.clamp(power @ banks.t(), min=EPS)).to(torch.float32)
    return feats[0] if single else feats


def spec_augment(spec: Tensor, freq_mask: int = 0, time_mask: int = 0, generator: torch.Generator | None = None,
                 mask_value: float = 0.0) -> Tensor:
    """SpecAugment's masking (Park et al. 2019), a training-time option: for each spectrogram of ``spec (B, frames,
    bins)`` one band of ``U[0, freq_mask)`` mel bins and one of ``U[0, time_mask)`` frames set to ``mask_value``
    (torchaudio's draws: width ``floor(u * max)``, start ``floor(u * (size - width))``). Returns a new tensor.

    Raises:
        ValueError: not ``(B, frames, bins)``, or a mask wider than its axis.
    """
    if spec.dim() != 3:
        raise ValueError(f"expected spectrograms (batch, frames, bins), got {tuple(spec.shape)}")
    B, T, F = spec.shape
    if freq_mask > F or time_mask > T:
        raise ValueError(f"masks of up to {freq_mask} bins / {time_mask} frames do not fit {F} bins x {T} frames")
    out = spec.clone()
    for axis, size, most in ((2, F, freq_mask), (1, T, time_mask)):
        if most <= 0:
            continue
        u = torch.rand(B, 2, generator=generator)
        width = (u[:, 0] * most).long()
        start = (u[:, 1] * (size - width)).long()
        pos = torch.arange(size)[None]
        band = ((pos >= start[:, None]) & (pos < (start + width)[:, None])).to(spec.device)  # (B, size)
        out.masked_fill_(band[:, None, :] if axis == 2 else band[:, :, None], mask_value)
    return out
