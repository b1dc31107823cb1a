"""Spoken keywords as the bytes of WAV files (ByteFormer, Horton et al. 2023, classifies audio from its file bytes):
the clips of the ``keywords`` dataset (:mod:`.keywords`: espeak-ng voices, held out between the
splits), resampled to ``sample_rate``, centred in ``seconds`` and written as WAV files (``encoding`` 8-bit mu-law by
default: 8,058 bytes for one second at 8 kHz; ``pcm8``, ``pcm16``).

Inputs: ``(N, L)`` int64 byte values of whole WAV files (all clips have the same length here).
"""

from __future__ import annotations

import numpy as np
import torch

from ..base import SuiteDataset, SuiteSplit, as_bytes, check_positive, long_tensor, split_rngs
from .keywords import DIGITS, asterisk_digits, fit_length, keyword_clips, voice_splits
from .speech import RATE, synthesise_all
from .wav import resample, wav_bytes


def _files(waves: list[torch.Tensor], rate: int, sample_rate: int, seconds: float, encoding: str) -> torch.Tensor:
    samples = int(round(seconds * sample_rate))
    return as_bytes([wav_bytes(fit_length(resample(w.float(), rate, sample_rate), samples).numpy(), sample_rate,
                               encoding) for w in waves])


def make_keyword_bytes(words: list[str] | None = None, train_voices: int = 120, val_voices: int = 16,
                       test_voices: int = 24, seconds: float = 1.0, sample_rate: int = 8000, encoding: str = "mulaw8",
                       test: str = "voices", seed: int = 0) -> SuiteDataset:
    """The keyword clips as WAV file bytes; options as ``keywords`` (``test="asterisk"``: the real digit recordings).

    Raises:
        FileNotFoundError: espeak-ng (or the asterisk sounds) not installed.
        ValueError: bad words, sizes, ``encoding`` or ``test``.
    """
    words = tuple(DIGITS if words is None else words)
    if len(words) < 2 or len(set(words)) != len(words):
        raise ValueError(f"words must be at least two distinct words, got {list(words)!r}")
    check_positive(sample_rate=sample_rate)
    if encoding not in ("mulaw8", "pcm8", "pcm16"):
        raise ValueError(f"encoding must be one of ['mulaw8', 'pcm16', 'pcm8'], got {encoding!r}")
    if test not in ("voices", "asterisk") or (test == "asterisk" and words != DIGITS):
        raise ValueError(f"test must be 'voices' or 'asterisk' (the ten digits only), got {test!r} with {list(words)}")
    if not isinstance(seconds, (int, float)) or not 0.1 <= seconds <= 30:
        raise ValueError(f"seconds must be a clip length between 0.1 and 30, got {seconds!r}")
    splits, rows, labels = voice_splits(train_voices, val_voices, test_voices, seed), [], []
    for split_voices, rng in zip(splits, split_rngs(seed, 3)):  # the same clips as keywords with the same options
        clips, y = keyword_clips(words, split_voices, rng)
        rows.append(_files([torch.from_numpy(w) for w in synthesise_all(clips)], RATE, sample_rate, seconds,
                           encoding))
        labels.append(y)
    if test == "asterisk":
        waves, rate, labels[2] = asterisk_digits()
        rows[2] = _files(waves, rate, sample_rate, seconds, encoding)
    split = lambda x, y: SuiteSplit(x, long_tensor(np.array(y)), input_key="bytes")  # noqa: E731
    options = dict(words=list(words), train_voices=train_voices, val_voices=val_voices, test_voices=test_voices,
                   seconds=seconds, sample_rate=sample_rate, encoding=encoding, test=test, seed=seed)
    return SuiteDataset(name="keyword_bytes", kind="classify", train=split(rows[0], labels[0]),
                        val=split(rows[1], labels[1]), test=split(rows[2], labels[2]), seq_len=1, metric="accuracy",
                        num_classes=len(words), label_names=words, options=options,
                        byte_length=max(r.shape[1] for r in rows))
