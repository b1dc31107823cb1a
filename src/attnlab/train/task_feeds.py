"""Feeds for the objectives that do not train on plain text windows, and the choice of feed from a run config.

- ``objective.name: seq2seq`` trains an encoder-decoder on a seq2seq dataset of the suite (``reversal``,
  ``addition``, ``sentiment_t2t``; ``attnlab list datasets``) through :class:`~attnlab.train.feeds.DatasetFeed`.
- ``objective.name: mlm`` trains an encoder on the text corpus of ``data`` with BERT's masking (Devlin et al.
  2019) applied to each window by :class:`MLMFeed`: one extra id, ``[MASK]`` = the tokenizer's vocabulary size.
- ``objective.name: forecast`` trains a series preset on an embedded series or a CSV file
  (:class:`~attnlab.train.forecast_feed.ForecastFeed`).
- ``data.dataset`` naming a suite dataset (``sentiment``, ``listops``, ``mqar``, ``digits``, ...) trains on it through
  a :class:`~attnlab.train.feeds.DatasetFeed` (the model gets that dataset's head); an image dataset with the
  ``crop_padding`` / ``flip`` options through :class:`AugmentedImageFeed`, a spectrogram dataset with the
  ``freq_mask`` / ``time_mask`` options through :class:`AugmentedAudioFeed`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..config import RunConfig
from ..data.registry import get_dataset, list_datasets
from ..data.text import LMData, WindowSampler, build_lm_data, eval_batches
from ..data.audio.fbank import spec_augment
from ..data.vision.augment import augment_images
from ..objectives.mlm import mask_tokens
from .feeds import DatasetFeed, LMDatasetFeed


def _generator(*seed: int) -> torch.Generator:
    """A torch generator whose stream is a pure function of ``seed`` (so resumed masks equal uninterrupted ones)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(seed)).generate_state(1)[0]))


def word_boundaries(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Per id of ``tokenizer``: ``(starts_word (V,), is_space (V,))`` bool tables for whole-word masking.

    A token starts a word when the tokenizer marks it (WordPiece: no ``##``; byte-level BPE: a leading ``Ġ``;
    Unigram: a leading ``▁``; word: always), and after a whitespace token (character and byte tokenizers only
    have the latter).
    """
    V = tokenizer.vocab_size
    hf = getattr(tokenizer, "hf", None)
    strings = [hf.id_to_token(i) or "" for i in range(V)] if hf is not None else \
        [tokenizer.decode([i]) for i in range(V)]
    kind = getattr(tokenizer, "kind", None)
    marks = {"wordpiece": lambda s: not s.startswith("##"), "bpe": lambda s: s.startswith(("Ġ", "Ċ")),
             "unigram": lambda s: s.startswith("▁"), "word": lambda s: True}
    starts = np.array([marks[kind](s) if kind in marks else False for s in strings])
    space = np.array([s != "" and (s.strip() == "" or s in ("Ġ", "Ċ", "▁")) for s in strings])
    return starts, space


def word_ids(ids: Tensor, starts: np.ndarray, space: np.ndarray) -> Tensor:
    """``ids (B, T)`` -> ``(B, T)`` word index per token (pieces of one word share it), from the tables of
    :func:`word_boundaries`."""
    s, sp = torch.from_numpy(starts)[ids], torch.from_numpy(space)[ids]
    after_space = torch.cat([torch.ones_like(sp[:, :1]), sp[:, :-1]], dim=1)
    boundary = s | sp | after_space
    return boundary.long().cumsum(1) - 1


class MLMFeed:
    """Text windows of a corpus, masked for masked language modelling (``objective.name: mlm``).

    Batches are ``{"idx": (B, T) corrupted ids, "labels": (B, T) originals or -100}``; the mask of a batch is a
    pure function of ``(seed, step, micro-batch, rank)``, the validation batches' of a fixed seed.

    Raises:
        ValueError: a corpus too short for ``seq_len`` (from the sampler).
    """

    kind = "mlm"

    def __init__(self, data: LMData, prob: float = 0.15, whole_word: bool = False):
        self.data, self.prob = data, prob
        self.tokenizer, self.seq_len = data.tokenizer, data.seq_len
        self.mask_id = data.vocab_size
        self.words = word_boundaries(data.tokenizer) if whole_word else None

    @property
    def vocab_size(self) -> int:
        return self.data.vocab_size + 1  # the [MASK] id

    def mask(self, idx: Tensor, *seed: int) -> dict[str, Tensor]:
        """``idx (B, T)`` -> the masked batch (seeded by ``seed``)."""
        wid = word_ids(idx, *self.words) if self.words is not None else None
        inputs, labels = mask_tokens(idx, mask_id=self.mask_id, vocab_size=self.vocab_size, prob=self.prob,
                                     word_ids=wid, generator=_generator(*seed))
        return {"idx": inputs, "labels": labels}

    def sampler(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                grad_accum: int = 1) -> "MaskingSampler":
        windows = WindowSampler(self.data.train, self.seq_len, batch_size, seed, rank, world_size, grad_accum)
        return MaskingSampler(self, windows)

    def eval_batches(self, batch_size: int, num_batches: int, rank: int = 0, world_size: int = 1) -> list[dict]:
        batches = eval_batches(self.data.val, self.seq_len, batch_size, num_batches, rank, world_size)
        return [self.mask(b["idx"], 7, i, rank) for i, b in enumerate(batches)]


class MaskingSampler:
    """A :class:`~attnlab.data.text.WindowSampler` whose windows :class:`MLMFeed` masks; same state and resume."""

    def __init__(self, feed: MLMFeed, windows: WindowSampler):
        self.feed, self.windows = feed, windows

    def next(self) -> dict[str, Tensor]:
        step, micro = divmod(self.windows.position, self.windows.grad_accum)
        b = self.windows.next()
        return self.feed.mask(b["idx"], self.windows.seed, step, micro, self.windows.rank)

    def state_dict(self) -> dict:
        return self.windows.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.windows.load_state_dict(state)


class AugmentedImageFeed(DatasetFeed):
    """An image dataset whose training batches are augmented (``crop_padding``, ``flip``, ``erase`` options) as
    a pure function of ``(seed, step, micro-batch, rank)``; evaluation batches are not augmented. Crops pad with a
    black pixel in the dataset's normalisation."""

    def sampler(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                grad_accum: int = 1) -> "AugmentingSampler":
        mean, std = self.dataset.image_norm
        options = self.dataset.options
        return AugmentingSampler(super().sampler(batch_size, seed, rank, world_size, grad_accum),
                                 options["crop_padding"], options["flip"], tuple(-m / s for m, s in zip(mean, std)),
                                 options.get("erase", 0.0))


class AugmentingSampler:
    """A :class:`~attnlab.train.feeds.SplitSampler` whose ``pixels`` are augmented; same state and resume."""

    def __init__(self, rows, crop_padding: int, flip: bool, fill: tuple[float, ...] | None = None,
                 erase: float = 0.0):
        self.rows, self.crop_padding, self.flip, self.fill, self.erase = rows, crop_padding, flip, fill, erase

    def next(self) -> dict[str, Tensor]:
        step, micro = divmod(self.rows.position, self.rows.grad_accum)
        b = self.rows.next()
        g = _generator(self.rows.seed, step, micro, self.rows.rank)
        pixels = augment_images(b["pixels"], self.crop_padding, self.flip, g, self.fill, self.erase)
        return {**b, "pixels": pixels}

    def state_dict(self) -> dict:
        return self.rows.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.rows.load_state_dict(state)


class AugmentedAudioFeed(DatasetFeed):
    """A spectrogram dataset whose training batches get SpecAugment masks (Park et al. 2019; the ``freq_mask`` /
    ``time_mask`` options of the dataset: the widest band of mel bins / frames) as a pure function of ``(seed, step,
    micro-batch, rank)``, filled with 0 (the normalised mean, as AST does); evaluation batches are not masked."""

    def sampler(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                grad_accum: int = 1) -> "SpecAugmentSampler":
        return SpecAugmentSampler(super().sampler(batch_size, seed, rank, world_size, grad_accum),
                                  self.dataset.options["freq_mask"], self.dataset.options["time_mask"])


class SpecAugmentSampler(AugmentingSampler):
    """A :class:`~attnlab.train.feeds.SplitSampler` whose ``spectrogram`` is masked; same state and resume."""

    def __init__(self, rows, freq_mask: int, time_mask: int):
        self.rows, self.freq_mask, self.time_mask = rows, freq_mask, time_mask

    def next(self) -> dict[str, Tensor]:
        step, micro = divmod(self.rows.position, self.rows.grad_accum)
        b = self.rows.next()
        g = _generator(self.rows.seed, step, micro, self.rows.rank)
        return {**b, "spectrogram": spec_augment(b["spectrogram"], self.freq_mask, self.time_mask, g)}


def feed_for_config(cfg: RunConfig, tokenizer_file: str | None = None):
    """The feed ``cfg`` trains on, or ``None`` for plain text language modelling (see the module docstring).

    ``tokenizer_file`` replaces training the tokenizer of an ``mlm`` corpus (a resumed run keeps its own).

    Raises:
        ValueError: ``objective.name: seq2seq`` with a dataset that is not a seq2seq dataset (names them),
            ``data.options`` for a text corpus or unknown to the dataset, or masking options without ``mlm``.
    """
    d, objective = cfg.data, cfg.objective
    fields = type(objective).model_fields
    if objective.name != "mlm" and (objective.mask_prob != fields["mask_prob"].default or objective.whole_word):
        raise ValueError(f"objective.mask_prob and objective.whole_word apply to objective mlm, not "
                         f"{objective.name!r}; remove them")
    if objective.name in ("forecast", "patch_mask"):  # a series under the forecasting protocol (forecast_feed)
        from .forecast_feed import forecast_feed

        return forecast_feed(cfg)
    if objective.name == "irregular":  # the synthetic irregular-series classification task
        from .irregular_feed import irregular_feed

        return irregular_feed(cfg)
    from .forecast_feed import check_not_series

    check_not_series(cfg)
    suite = d.dataset in list_datasets()
    if objective.name == "seq2seq" and not suite:
        seq2seq = [n for n in list_datasets() if _kind(n) == "seq2seq"]
        raise ValueError(f"objective.name=seq2seq trains on a seq2seq dataset, not {d.dataset!r}; set data.dataset "
                         f"to one of {seq2seq}")
    if suite:
        return feed_for_dataset(get_dataset(d.dataset, **d.options))
    _check_misspelt(d.dataset)
    if d.options:
        raise ValueError(f"data.options {sorted(d.options)} apply to suite datasets (`attnlab list datasets`), not to "
                         f"the text {d.dataset!r}; remove them")
    if objective.name == "mlm":
        tok = d.tokenizer if tokenizer_file is None else str(tokenizer_file)
        data = build_lm_data(d.dataset, tok, d.seq_len, d.val_fraction, d.split, d.vocab_size)
        return MLMFeed(data, objective.mask_prob, objective.whole_word)
    return None


def _check_misspelt(name: str) -> None:
    """Raises ValueError for a ``data.dataset`` that is no dataset and no file but close to a dataset's name (before
    the errors about text files, which would mislead: ``fashion_image`` is not meant as a text file)."""
    import difflib
    from pathlib import Path

    from ..data.sources import list_sources

    names = [*list_datasets(), *list_sources("text")]
    if name in names or Path(name).expanduser().exists():
        return
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.75)
    if close:
        raise ValueError(f"data.dataset={name!r} is not a dataset or a file. Did you mean {close}? "
                         "(`attnlab list datasets` lists them)")


def feed_for_dataset(dataset) -> DatasetFeed:
    """The feed of a suite dataset: augmented images or spectrograms when its options ask for it, else the plain
    dataset feed."""
    if getattr(dataset, "image_shape", None) is not None and any(dataset.options.get(k)
                                                                 for k in ("crop_padding", "flip", "erase")):
        return AugmentedImageFeed(dataset)
    if getattr(dataset, "audio_shape", None) is not None and (dataset.options.get("freq_mask")
                                                            or dataset.options.get("time_mask")):
        return AugmentedAudioFeed(dataset)
    return LMDatasetFeed(dataset) if dataset.kind == "lm" else DatasetFeed(dataset)


def _kind(name: str) -> str:
    from ..data.registry import DATASETS

    return DATASETS.get(name).kind
