"""Spoken keywords as the bytes of WAV files (ByteFormer, Horton et al. 2023, classifies audio from its file bytes):
the clips of the ``keywords`` dataset (:mod:`.keywords`: espeak-ng voices, held out between the
splits), resampled to ``sample_rate``, centred in ``seconds`` and written as WAV files (``encoding`` 8-bit mu-law by
default: 8,058 bytes for one second at 8 kHz; ``pcm8``, ``pcm16``).

Inputs: ``(N, L)`` int64 byte values of whole WAV files (all clips have the same length here).
"""

from __future__ import annotations

import numpy as np
import torch

from ..base import SuiteDataset, SuiteSplit, as_bytes, long_tensor
from .keywords import check_clip, check_words, fit_length, keyword_splits
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
    words = check_words(words, test)
    check_clip(seconds, sample_rate)
    if encoding not in ("mulaw8", "pcm8", "pcm16"):
        raise ValueError(f"encoding must be one of ['mulaw8', 'pcm16', 'pcm8'], got {encoding!r}")
    # the same clips as keywords with the same options
    parts = keyword_splits(words, train_voices, val_voices, test_voices, test, seed)
    rows = [_files(waves, rate, sample_rate, seconds, encoding) for waves, rate, _ in parts]
    labels = [y for _, _, y in parts]
    split = lambda x, y: SuiteSplit(x, long_tensor(np.array(y)), input_key="bytes")  # noqa: E731
    options = dict(words=list(words), train_voices=train_voices, val_voices=val_voices, test_voices=test_voices,
                   seconds=seconds, sample_rate=sample_rate, encoding=encoding, test=test, seed=seed)
    return SuiteDataset(name="keyword_bytes", kind="classify", train=split(rows[0], labels[0]),
                        val=split(rows[1], labels[1]), test=split(rows[2], labels[2]), seq_len=1, metric="accuracy",
                        num_classes=len(words), label_names=words, options=options,
                        byte_length=max(r.shape[1] for r in rows))
