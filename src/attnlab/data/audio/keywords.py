"""Keyword spotting datasets: spoken words as spectrograms (AST, PaSST) or as WAV file bytes (ByteFormer).

- ``keywords``: words synthesised by espeak-ng (:mod:`.speech`) in many voices, each clip at its own speed and pitch;
  the voices of the training, validation and test splits are disjoint (a model is scored on voices it never heard).
  ``test="asterisk"`` scores instead on real recordings: the digit prompts of Debian's
  ``asterisk-core-sounds-en-wav`` (one speaker, 8 kHz telephone audio; the ten words zero .. nine only), an
  out-of-domain test.
- ``audio_folder``: a user's folder of WAV files, one sub-folder per class, a seeded split per class.
- ``keyword_bytes``: the ``keywords`` clips as the bytes of WAV files (ByteFormer, Horton et al. 2023: classification
  from file bytes without decoding), 8 kHz, 8-bit mu-law by default.

Every clip is resampled to ``sample_rate``, centred in ``seconds`` (cropped or zero-padded on both sides) and, for
spectrograms, turned into a Kaldi log-mel filterbank (:func:`.fbank.fbank`: 25 ms windows, 10 ms hop) of ``frames``
x ``mel_bins``, normalised as AST does: ``(x - mean) / (2 std)`` with the training split's mean and std.
SpecAugment masking (``freq_mask``, ``time_mask``) is applied to training batches by the trainer's feed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..base import SuiteDataset, SuiteSplit, check_positive, long_tensor, split_rngs
from ..sources import source_path
from .fbank import fbank
from .speech import RATE, Clip, synthesise_all, voices
from .wav import read_wav, resample

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPEEDS, PITCHES = (120, 200), (20, 80)  # espeak-ng words/minute and pitch ranges drawn per clip


def fit_length(wave: torch.Tensor, samples: int) -> torch.Tensor:
    """``wave (N,)`` centred in ``samples``: the middle part when longer, zero-padded on both sides when shorter."""
    n = wave.shape[0]
    if n >= samples:
        start = (n - samples) // 2
        return wave[start:start + samples]
    left = (samples - n) // 2
    return torch.nn.functional.pad(wave, (left, samples - n - left))


def spectrograms(waves: list[torch.Tensor], rate: int, sample_rate: int, seconds: float, mel_bins: int,
                 frames: int) -> torch.Tensor:
    """Waveforms at ``rate`` -> log-mel spectrograms ``(N, frames, mel_bins)`` (not normalised)."""
    samples = int(round(seconds * sample_rate))
    batch = torch.stack([fit_length(resample(w.float(), rate, sample_rate) if rate != sample_rate else w.float(),
                                    samples) for w in waves])  # (N, samples)
    feats = torch.cat([fbank(chunk, sample_rate, mel_bins) for chunk in batch.split(256)])  # (N, F, bins)
    F = feats.shape[1]
    return feats[:, :frames] if F >= frames else torch.nn.functional.pad(feats, (0, 0, 0, frames - F), value=feats.min())


def check_words(words, test: str) -> tuple[str, ...]:
    """The keyword list (default: the digits), checked with the ``test`` split it is scored on.

    Raises:
        ValueError: fewer than two distinct non-empty words, ``test`` not voices / asterisk, asterisk with other
            words than the digits.
    """
    words = tuple(DIGITS if words is None else words)
    if len(words) < 2 or len(set(words)) != len(words) or not all(isinstance(w, str) and w.strip() for w in words):
        raise ValueError(f"words must be at least two distinct non-empty words, got {list(words)!r}")
    if test not in ("voices", "asterisk"):
        raise ValueError(f"test must be 'voices' (held-out synthetic voices) or 'asterisk' (real recordings), got {test!r}")
    if test == "asterisk" and words != DIGITS:
        raise ValueError(f"test='asterisk' scores the ten digits; words must be {list(DIGITS)} (the default)")
    return words


def check_clip(seconds, sample_rate) -> None:
    """Raises ``ValueError`` for a clip length outside 0.1-30 s or a non-positive sample rate."""
    check_positive(sample_rate=sample_rate)
    if not isinstance(seconds, (int, float)) or not 0.1 <= seconds <= 30:
        raise ValueError(f"seconds must be a clip length between 0.1 and 30, got {seconds!r}")


def _check_spectrogram(mel_bins, frames, freq_mask, time_mask) -> None:
    check_positive(mel_bins=mel_bins, frames=frames)
    for name, v in (("freq_mask", freq_mask), ("time_mask", time_mask)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an int >= 0 (the widest SpecAugment band; 0 = off), got {v!r}")
    if freq_mask > mel_bins or time_mask > frames:
        raise ValueError(f"SpecAugment bands of up to {freq_mask} bins / {time_mask} frames do not fit {mel_bins} "
                         f"bins x {frames} frames")


def voice_splits(train_voices: int, val_voices: int, test_voices: int, seed: int) -> tuple[list[str], ...]:
    """Disjoint seeded samples of espeak-ng voices for (train, val, test).

    Raises:
        ValueError: more voices asked for than espeak-ng has.
    """
    check_positive(train_voices=train_voices, val_voices=val_voices, test_voices=test_voices)
    every = voices()
    wanted = train_voices + val_voices + test_voices
    if wanted > len(every):
        raise ValueError(f"{wanted} voices asked for, espeak-ng has {len(every)}: lower train_voices, val_voices or "
                         "test_voices")
    order = np.random.default_rng(np.random.SeedSequence([seed, 7])).permutation(len(every))
    picked = [every[i] for i in order[:wanted]]
    return picked[:train_voices], picked[train_voices:train_voices + val_voices], picked[train_voices + val_voices:]


def keyword_clips(words: tuple[str, ...], split_voices: list[str], rng: np.random.Generator) -> tuple[list[Clip], list[int]]:
    """One clip per (voice, word) at a drawn speed and pitch, and its label (the word's index)."""
    clips, labels = [], []
    for voice in split_voices:
        for label, word in enumerate(words):
            speed, pitch = int(rng.integers(*SPEEDS, endpoint=True)), int(rng.integers(*PITCHES, endpoint=True))
            clips.append(Clip(word, voice, speed, pitch))
            labels.append(label)
    return clips, labels


def asterisk_digits(root: str | Path | None = None) -> tuple[list[torch.Tensor], int, list[int]]:
    """The ten digit prompts ``0.wav`` .. ``9.wav`` of Debian's asterisk sounds: waveforms, rate, labels 0..9.

    Raises:
        FileNotFoundError: the package is not installed (names the install command).
    """
    folder = source_path("keywords") if root is None else Path(root)
    waves, rates = zip(*(read_wav(folder / f"{d}.wav") for d in range(10)))
    if len(set(rates)) != 1:
        raise ValueError(f"the asterisk digit prompts have different sample rates {sorted(set(rates))}")
    return list(waves), rates[0], list(range(10))


def keyword_splits(words: tuple[str, ...], train_voices: int, val_voices: int, test_voices: int, test: str,
                   seed: int) -> list[tuple[list[torch.Tensor], int, list[int]]]:
    """``(waveforms, sample rate, labels)`` of the train, val and test splits: espeak-ng clips of disjoint voices,
    the test split the Asterisk recordings when ``test="asterisk"`` (``keywords`` and ``keyword_bytes`` share them).
    """
    out = []
    for split_voices, rng in zip(voice_splits(train_voices, val_voices, test_voices, seed), split_rngs(seed, 3)):
        clips, labels = keyword_clips(words, split_voices, rng)
        out.append(([torch.from_numpy(w) for w in synthesise_all(clips)], RATE, labels))
    if test == "asterisk":
        out[2] = asterisk_digits()
    return out


def _normalise(train: torch.Tensor, *others: torch.Tensor | None) -> tuple[tuple[float, float], list]:
    mean, std = float(train.mean()), float(train.std()) + 1e-6
    return (mean, std), [None if x is None else (x - mean) / (2 * std) for x in (train, *others)]


def make_keywords(words: list[str] | None = None, train_voices: int = 120, val_voices: int = 16, test_voices: int = 24,
                  seconds: float = 1.0, sample_rate: int = 16000, mel_bins: int = 128, frames: int = 98,
                  freq_mask: int = 0, time_mask: int = 0, test: str = "voices", seed: int = 0) -> SuiteDataset:
    """Spoken keywords as spectrograms ``(N, frames, mel_bins)``, one class per word (default: the ten digits).

    ``test="voices"``: the test split is ``test_voices`` voices held out from training and validation;
    ``"asterisk"``: the real digit recordings of Debian's asterisk sounds (``words`` must be the digits).

    Raises:
        FileNotFoundError: espeak-ng (or, for ``test="asterisk"``, the asterisk sounds) not installed.
        ValueError: bad words, sizes or masks; ``test`` not voices / asterisk; asterisk with other words.
    """
    words = check_words(words, test)
    check_clip(seconds, sample_rate)
    _check_spectrogram(mel_bins, frames, freq_mask, time_mask)
    parts = keyword_splits(words, train_voices, val_voices, test_voices, test, seed)
    specs = [spectrograms(waves, rate, sample_rate, seconds, mel_bins, frames) for waves, rate, _ in parts]
    labels = [y for _, _, y in parts]
    norm, (tr, va, te) = _normalise(*specs)
    split = lambda x, y: SuiteSplit(x.contiguous(), long_tensor(np.array(y)), input_key="spectrogram")  # noqa: E731
    options = dict(words=list(words), train_voices=train_voices, val_voices=val_voices, test_voices=test_voices,
                   seconds=seconds, sample_rate=sample_rate, mel_bins=mel_bins, frames=frames, freq_mask=freq_mask,
                   time_mask=time_mask, test=test, seed=seed)
    return SuiteDataset(name="keywords", kind="classify", train=split(tr, labels[0]), val=split(va, labels[1]),
                        test=split(te, labels[2]), seq_len=1, metric="accuracy", num_classes=len(words),
                        label_names=words, options=options, audio_shape=(frames, mel_bins), audio_norm=norm)


def make_audio_folder(path: str = "", sample_rate: int = 16000, seconds: float = 1.0, mel_bins: int = 128,
                      frames: int = 98, test_fraction: float = 0.2, freq_mask: int = 0, time_mask: int = 0,
                      seed: int = 0) -> SuiteDataset:
    """WAV files of ``path/<class>/*.wav`` as spectrograms; per class a seeded ``test_fraction`` goes to the test split
    (at least one clip stays in train).

    Raises:
        ValueError: no path, a missing folder, fewer than two class folders, a class without WAV files, a file that is
            not a readable WAV (names it: not RIFF/WAVE, unsupported sample width, empty, silent), bad options.
    """
    from ..base import class_files

    check_clip(seconds, sample_rate)
    _check_spectrogram(mel_bins, frames, freq_mask, time_mask)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    files = class_files(path, (".wav",), "audio_folder", "WAV files")
    (rng,) = split_rngs(seed, 1)
    parts = {"train": ([], []), "test": ([], [])}
    for label, paths in enumerate(files.values()):
        n_test = min(len(paths) - 1, int(round(test_fraction * len(paths))))
        for rank, i in enumerate(rng.permutation(len(paths))):
            wave, rate = read_wav(paths[i])
            waves, labels = parts["test" if rank < n_test else "train"]
            waves.append(resample(wave, rate, sample_rate) if rate != sample_rate else wave)
            labels.append(label)
    if not parts["test"][0]:
        raise ValueError(f"{path}: every class has a single clip, so the test split would be empty; add clips")
    specs = {k: spectrograms(v[0], sample_rate, sample_rate, seconds, mel_bins, frames) for k, v in parts.items()}
    norm, (tr, te) = _normalise(specs["train"], specs["test"])
    split = lambda x, y: SuiteSplit(x.contiguous(), long_tensor(np.array(y)), input_key="spectrogram")  # noqa: E731
    options = dict(path=str(path), sample_rate=sample_rate, seconds=seconds, mel_bins=mel_bins, frames=frames,
                   test_fraction=test_fraction, freq_mask=freq_mask, time_mask=time_mask, seed=seed)
    return SuiteDataset(name="audio_folder", kind="classify", train=split(tr, parts["train"][1]),
                        test=split(te, parts["test"][1]), seq_len=1, metric="accuracy", num_classes=len(files),
                        label_names=tuple(files), options=options, audio_shape=(frames, mel_bins), audio_norm=norm)
