"""WAV files to waveforms without torchaudio: RIFF/WAVE parsing (PCM 8/16/24/32-bit, IEEE float 32/64, and the
extensible header around either), channels averaged to mono, and band-limited resampling (Kaiser-windowed sinc, as
in Smith's "Digital Audio Resampling"; the rates' ratio reduced by their gcd, so 8 kHz -> 16 kHz is a 1:2 polyphase
filter).

Shapes: ``read_wav`` -> ``((samples,) float32 in [-1, 1], sample_rate)``; ``resample((..., N))`` -> ``(..., N')``
with ``N' = ceil(N * new / old)``.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE


def _chunks(raw: bytes, path: str) -> dict[bytes, bytes]:
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError(f"{path} is not a WAV file (no RIFF/WAVE header); convert it to WAV first")
    out, pos = {}, 12
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        out.setdefault(cid, raw[pos + 8:pos + 8 + size])
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    if b"fmt " not in out or b"data" not in out:
        raise ValueError(f"{path} has no {'fmt' if b'fmt ' not in out else 'data'} chunk: a truncated or broken WAV")
    return out


def _decode(data: bytes, fmt: int, width: int, path: str) -> np.ndarray:
    if fmt == PCM and width == 1:
        return (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    if fmt == PCM and width in (2, 4):
        kind = np.int16 if width == 2 else np.int32
        return np.frombuffer(data, kind).astype(np.float32) / float(2 ** (8 * width - 1))
    if fmt == PCM and width == 3:  # 24-bit: sign-extend three little-endian bytes
        b = np.frombuffer(data[: len(data) // 3 * 3], np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    if fmt == FLOAT and width in (4, 8):
        return np.frombuffer(data, np.float32 if width == 4 else np.float64).astype(np.float32)
    raise ValueError(f"{path}: {'PCM' if fmt == PCM else 'float' if fmt == FLOAT else f'format {fmt}'} samples of "
                     f"{8 * width} bits are not supported (PCM 8/16/24/32-bit and float 32/64-bit are)")


def read_wav(path: str | Path) -> tuple[Tensor, int]:
    """``(mono waveform, sample_rate)`` of a WAV file, channels averaged.

    Raises:
        ValueError: a missing file, not a WAV file, an unsupported sample format or width, no samples, a silent
            recording (every sample zero).
    """
    path = str(path)
    if not Path(path).is_file():
        raise ValueError(f"audio file {path!r} does not exist")
    chunks = _chunks(Path(path).read_bytes(), path)
    fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", chunks[b"fmt "][:16])
    if fmt == EXTENSIBLE and len(chunks[b"fmt "]) >= 26:
        fmt = struct.unpack("<H", chunks[b"fmt "][24:26])[0]  # the sub-format GUID starts with the real format
    width = bits // 8
    if channels < 1 or width < 1 or rate < 1:
        raise ValueError(f"{path}: a broken fmt chunk ({channels} channels, {bits} bits, {rate} Hz)")
    samples = _decode(chunks[b"data"], fmt, width, path)
    samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    if samples.size == 0:
        raise ValueError(f"{path} holds no samples (an empty recording)")
    if not np.any(samples):
        raise ValueError(f"{path} is silent (every sample is zero)")
    return torch.from_numpy(np.ascontiguousarray(samples)), int(rate)


def resample(wave: Tensor, old: int, new: int, zeros: int = 6, rolloff: float = 0.99, beta: float = 14.77) -> Tensor:
    """``wave (..., N)`` from ``old`` Hz to ``new`` Hz by a Kaiser-windowed sinc filter with ``zeros`` zero crossings
    per side, the cut-off at ``rolloff`` times the lower Nyquist frequency.

    Raises:
        ValueError: non-positive rates.
    """
    if old <= 0 or new <= 0:
        raise ValueError(f"sample rates must be positive, got {old} and {new}")
    if old == new:
        return wave
    g = math.gcd(old, new)
    up, down = new // g, old // g  # each output phase reads the input at old/new steps
    cutoff = min(up, down) * rolloff
    width = math.ceil(zeros * down / cutoff)
    dtype = torch.float64
    idx = torch.arange(-width, width + down, dtype=dtype, device=wave.device)[None] / down  # (1, K)
    t = (-torch.arange(up, dtype=dtype, device=wave.device)[:, None] / up + idx) * cutoff  # (up, K)
    t = t.clamp(-zeros, zeros)
    window = torch.special.i0(beta * torch.sqrt(1 - (t / zeros) ** 2)) / torch.special.i0(torch.tensor(beta, dtype=dtype))
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(math.pi * t) / (math.pi * t)) * window * cutoff / down
    shape, n = wave.shape[:-1], wave.shape[-1]
    x = torch.nn.functional.pad(wave.reshape(-1, 1, n).to(dtype), (width, width + down))
    y = torch.nn.functional.conv1d(x, kernel[:, None], stride=down)  # (B, up, frames)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : math.ceil(n * up / down)]
    return y.reshape(*shape, -1).to(wave.dtype)
