"""WAV files to waveforms without torchaudio: RIFF/WAVE parsing (PCM 8/16/24/32-bit, IEEE float 32/64, and the
extensible header around either), channels averaged to mono, and band-limited resampling (Kaiser-windowed sinc, as
in Smith's "Digital Audio Resampling"; the rates' ratio reduced by their gcd, so 8 kHz -> 16 kHz is a 1:2 polyphase
filter).

Shapes: ``read_wav`` -> ``((samples,) float32 in [-1, 1], sample_rate)``; ``resample((..., N))`` -> ``(..., N')``
with ``N' = ceil(N * new / old)``.
"""

from __future__ import annotations

import functools
import math
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

PCM, FLOAT, MULAW, EXTENSIBLE = 1, 3, 7, 0xFFFE
ULAW_BIAS, ULAW_CLIP = 0x84, 8159  # ITU-T G.711 mu-law on 14-bit magnitudes (Sun's g711.c, Python's audioop)
ULAW_SEGMENTS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])  # the segments' largest values


def ulaw_encode(x: np.ndarray) -> np.ndarray:
    """Samples in [-1, 1] -> G.711 mu-law bytes ``uint8``: the 14-bit magnitude's segment and 4 mantissa bits,
    inverted (bit-exact with Sun's reference encoder)."""
    p = np.clip(np.round(np.asarray(x, np.float64) * 32768), -32768, 32767).astype(np.int32) >> 2  # 14 bits
    mask = np.where(p < 0, 0x7F, 0xFF)
    p = np.minimum(np.abs(p), ULAW_CLIP) + (ULAW_BIAS >> 2)
    seg = np.searchsorted(ULAW_SEGMENTS, p)  # first segment whose end is >= p
    u = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((p >> (np.minimum(seg, 7) + 1)) & 0x0F))
    return (u ^ mask).astype(np.uint8)


def ulaw_decode(u: np.ndarray) -> np.ndarray:
    """G.711 mu-law bytes -> float32 samples in [-1, 1]."""
    u = ~np.asarray(u, np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    s = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS
    return (np.where(u & 0x80, -s, s) / 32768.0).astype(np.float32)


def wav_bytes(wave: Tensor | np.ndarray, rate: int, encoding: str = "pcm16") -> bytes:
    """A mono WAV file of ``wave (samples,)`` in [-1, 1]: ``encoding`` ``pcm16``, ``pcm8`` (unsigned) or ``mulaw8``
    (G.711, format 7, with the ``fact`` chunk non-PCM formats carry).

    Raises:
        ValueError: an unknown encoding, or not a 1-D waveform.
    """
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a mono waveform (samples,), got shape {x.shape}")
    x = np.clip(x, -1.0, 1.0)
    if encoding == "pcm16":
        data, fmt, width = np.round(x * 32767).astype("<i2").tobytes(), PCM, 2
    elif encoding == "pcm8":
        data, fmt, width = np.round(x * 127 + 128).astype(np.uint8).tobytes(), PCM, 1
    elif encoding == "mulaw8":
        data, fmt, width = ulaw_encode(x).tobytes(), MULAW, 1
    else:
        raise ValueError(f"unknown WAV encoding {encoding!r}; valid: ['mulaw8', 'pcm16', 'pcm8']")
    fmt_chunk = struct.pack("<HHIIHH", fmt, 1, rate, rate * width, width, 8 * width)
    chunks = [(b"fmt ", fmt_chunk + (b"" if fmt == PCM else struct.pack("<H", 0)))]
    if fmt != PCM:
        chunks.append((b"fact", struct.pack("<I", len(x))))
    chunks.append((b"data", data + b"\0" * (len(data) & 1)))
    body = b"".join(cid + struct.pack("<I", len(c) if cid != b"data" else len(data)) + c for cid, c in chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body


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
    if fmt == MULAW and width == 1:
        return ulaw_decode(np.frombuffer(data, np.uint8))
    raise ValueError(f"{path}: {'PCM' if fmt == PCM else 'float' if fmt == FLOAT else f'format {fmt}'} samples of "
                     f"{8 * width} bits are not supported (PCM 8/16/24/32-bit, float 32/64-bit and 8-bit mu-law are)")


def read_wav(path: str | Path) -> tuple[Tensor, int]:
    """``(mono waveform, sample_rate)`` of a WAV file, channels averaged.

    Raises:
        ValueError: a missing file, not a WAV file, an unsupported sample format or width, no samples, a silent
            recording (every sample zero).
    """
    path = str(path)
    if not Path(path).is_file():
        raise ValueError(f"audio file {path!r} does not exist")
    return read_wav_bytes(Path(path).read_bytes(), path)


def read_wav_bytes(raw: bytes, name: str = "the WAV data") -> tuple[Tensor, int]:
    """:func:`read_wav` of the bytes of a WAV file (``name`` appears in errors). Raises as :func:`read_wav`."""
    path = name
    chunks = _chunks(raw, path)
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


@functools.lru_cache(maxsize=16)
def _resampling_filter(up: int, down: int, zeros: int, rolloff: float, beta: float) -> tuple[Tensor, int]:
    """The ``(up, K)`` polyphase filter bank (float64, CPU) and its half-width, made once per rate pair: a dataset
    resamples thousands of clips of different lengths with it."""
    cutoff = min(up, down) * rolloff
    width = math.ceil(zeros * down / cutoff)
    dtype = torch.float64
    idx = torch.arange(-width, width + down, dtype=dtype)[None] / down  # (1, K)
    t = (-torch.arange(up, dtype=dtype)[:, None] / up + idx) * cutoff  # (up, K)
    t = t.clamp(-zeros, zeros)
    window = torch.special.i0(beta * torch.sqrt(1 - (t / zeros) ** 2)) / torch.special.i0(torch.tensor(beta, dtype=dtype))
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(math.pi * t) / (math.pi * t)) * window * cutoff / down
    return kernel, width


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
    kernel, width = _resampling_filter(up, down, zeros, rolloff, beta)
    kernel, dtype = kernel.to(wave.device), torch.float64
    shape, n = wave.shape[:-1], wave.shape[-1]
    x = torch.nn.functional.pad(wave.reshape(-1, 1, n).to(dtype), (width, width + down))
    y = torch.nn.functional.conv1d(x, kernel[:, None], stride=down)  # (B, up, frames)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : math.ceil(n * up / down)]
    return y.reshape(*shape, -1).to(wave.dtype)
