"""Feeds: what the Trainer draws its batches from, when it is not the text corpus of ``cfg.data``.

A feed gives the :class:`~attnlab.train.trainer.Trainer` what it needs from its data: ``vocab_size``, a
``tokenizer`` with a ``unit``, a resumable train sampler and fixed evaluation batches.

:class:`LMDatasetFeed` feeds a ``kind="lm"`` :class:`~attnlab.data.base.SuiteDataset` (MQAR, selective
copying, modular addition). Batches are ``{"idx" (B, T), "targets" (B, T), "loss_mask" (B, T)}``; the ``lm``
objective works unchanged because unscored targets hold ``IGNORE_INDEX`` (-100), which cross-entropy skips.

:class:`DatasetFeed` does the same for every kind: classification (``idx``, ``targets (B,)``,
``key_padding_mask``) and regression (``inputs (B, T, D)`` float, ``targets``, ``loss_mask``); the
Trainer then wraps the model in the dataset's head (:mod:`attnlab.models.heads`) and trains with the
``classify`` or ``regression`` objective. The Trainer's ``tokens`` (and tokens/s) count ``batch_size x seq_len``
sequence positions per step for every kind: padding included (the model computes over it), one position
per ``[x, 0]`` / ``[0, y]`` vector for regression.

Pass one as ``train(cfg, feed=DatasetFeed(dataset))``; ``data.seq_len`` must equal ``dataset.seq_len``.
:class:`CorpusFeed` feeds a text corpus that is already tokenized (a comparison grid shares one between cells).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data.base import SuiteDataset, SuiteSplit


@dataclass(frozen=True)
class TokenIds:
    """The "tokenizer" of a suite dataset: inputs already are ids in ``[0, vocab_size)`` (``None``: real-valued)."""

    vocab_size: int | None
    unit: str = "token"


class SplitSampler:
    """Random training rows of a :class:`SuiteSplit`, a pure function of ``(seed, step)`` like
    :class:`~attnlab.data.text.WindowSampler`, so resuming at ``position`` replays the same stream.

    ``next()`` returns ``split.batch(rows)`` with ``B = batch_size`` rows for this rank; rows are drawn
    with replacement from all ``N`` rows (every rank draws the same ``B * world_size * grad_accum``
    rows per step and takes its own slice). ``state_dict()`` is JSON.
    """

    def __init__(self, split: SuiteSplit, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 grad_accum: int = 1):
        if len(split) < 1:
            raise ValueError("the dataset's train split is empty; raise num_train")
        self.split, self.batch_size = split, batch_size
        self.seed, self.rank, self.world_size, self.grad_accum = seed, rank, world_size, grad_accum
        self.position = 0  # micro-batches consumed

    def batch(self, step: int, micro: int = 0) -> dict[str, Tensor]:
        per_micro = self.batch_size * self.world_size
        rng = np.random.default_rng([self.seed, step])
        rows = rng.integers(0, len(self.split), size=per_micro * self.grad_accum)
        rows = rows[micro * per_micro:(micro + 1) * per_micro][self.rank::self.world_size]  # (B,)
        return self.split.batch(torch.from_numpy(rows))

    def next(self) -> dict[str, Tensor]:
        b = self.batch(*divmod(self.position, self.grad_accum))
        self.position += 1
        return b

    def state_dict(self) -> dict:
        return {"seed": self.seed, "position": self.position, "rows": len(self.split),
                "batch_size": self.batch_size, "world_size": self.world_size, "grad_accum": self.grad_accum}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; raises ``ValueError`` if the stream itself would differ."""
        for key in ("seed", "batch_size", "world_size", "grad_accum"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"checkpoint sampler has {key}={state.get(key)} but this run has {getattr(self, key)}; "
                                 "resume with the same data settings and number of processes")
        if state.get("rows") != len(self.split):
            raise ValueError(f"checkpoint sampler drew from {state.get('rows')} rows but this dataset has "
                             f"{len(self.split)}; resume with the same dataset options")
        self.position = int(state["position"])


UNITS = {"lm": "token", "classify": "example", "regression": "position", "seq2seq": "token"}  # what one loss value averages over


class DatasetFeed:
    """Any dataset of the suite (kind ``lm``, ``classify`` or ``regression``) as the Trainer's data source.

    ``kind`` tells :func:`~attnlab.train.build.build_for_config` which head to put on the model and which
    objective to train with (``objective.name`` = ``kind``); ``vocab_size`` is ``None`` for regression
    (real-valued inputs). Batches are ``SuiteSplit.batch`` dicts: ``idx`` or ``inputs``, ``targets`` and, when
    the dataset has them, ``loss_mask`` / ``key_padding_mask``.
    """

    def __init__(self, dataset: SuiteDataset):
        self.dataset, self.kind = dataset, dataset.kind
        self.tokenizer = TokenIds(dataset.vocab_size, UNITS[dataset.kind])
        self.seq_len = dataset.seq_len

    @property
    def vocab_size(self) -> int | None:
        return self.dataset.vocab_size

    def sampler(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                grad_accum: int = 1) -> SplitSampler:
        return SplitSampler(self.dataset.train, batch_size, seed, rank, world_size, grad_accum)

    def eval_batches(self, batch_size: int, num_batches: int, rank: int = 0,
                     world_size: int = 1, split: str = "val") -> list[dict[str, Tensor]]:
        """The first ``num_batches * batch_size * world_size`` rows of ``split`` (fewer if the split is smaller),
        in order, this rank's share of each batch. ``"val"`` is the dataset's validation split where it has one,
        else its test split; ``"test"`` the test split; ``"train"`` the training split (not augmented)."""
        out = []
        val = getattr(self.dataset, "val", None)  # suite datasets may have one; seq2seq datasets do not
        rows_of = {"val": val if val is not None else self.dataset.test, "test": self.dataset.test,
                   "train": self.dataset.train}[split]
        n = len(rows_of)
        per = batch_size * world_size
        for b in range(num_batches):
            if b * per >= n:
                break
            rows = torch.arange(b * per, min((b + 1) * per, n))[rank::world_size]  # (<= B,)
            if len(rows):
                out.append(rows_of.batch(rows))
        return out


class LMDatasetFeed(DatasetFeed):
    """A ``kind="lm"`` dataset as the Trainer's data source (see module docstring).

    Raises:
        ValueError: the dataset is not of kind ``"lm"`` (use :class:`DatasetFeed` for classify/regression).
    """

    def __init__(self, dataset: SuiteDataset):
        if dataset.kind != "lm":
            raise ValueError(f"dataset {dataset.name!r} is of kind {dataset.kind!r}; only kind 'lm' datasets train "
                             "through the lm objective (choose mqar, selective_copy or modular_addition, or use "
                             "DatasetFeed)")
        super().__init__(dataset)


class CorpusFeed:
    """A text corpus (:class:`~attnlab.data.text.LMData`) behind the same interface as :class:`LMDatasetFeed`,
    so a comparison grid can tokenize the corpus once and share it between cells. Batches and evaluation
    windows are exactly those of the default text path (:class:`~attnlab.data.text.WindowSampler`,
    :func:`~attnlab.data.text.eval_batches`)."""

    def __init__(self, data):
        self.data = data
        self.tokenizer, self.seq_len = data.tokenizer, data.seq_len

    @property
    def vocab_size(self) -> int:
        return self.data.vocab_size

    def sampler(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, grad_accum: int = 1):
        from ..data.text import WindowSampler

        return WindowSampler(self.data.train, self.seq_len, batch_size, seed, rank, world_size, grad_accum)

    def eval_batches(self, batch_size: int, num_batches: int, rank: int = 0,
                     world_size: int = 1) -> list[dict[str, Tensor]]:
        from ..data.text import eval_batches

        return eval_batches(self.data.val, self.seq_len, batch_size, num_batches, rank, world_size)
