"""Sentence batches for the trainer: the teacher's token ids of unlabelled sentences, padded per batch.

The order is a seeded permutation per epoch, so batch ``i`` is a pure function of ``(seed, i)`` and a resumed run
draws the batches an uninterrupted one would. A fixed share of the sentences is held out for the validation loss.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from ..data.text.sentences import load_sentences
from .config import SentenceData


class TeacherTokenizer:
    """The teacher's tokenizer as a run records it (``tokenizer.json``, a digest that a resume compares)."""

    unit = "token"

    def __init__(self, tok):
        self.tok = tok

    @property
    def vocab_size(self) -> int:
        return self.tok.vocab_size

    def to_dict(self) -> dict:
        import json

        return json.loads(self.tok.tokenizer.to_str())


class SentenceFeed:
    """``ids`` of every sentence (at most ``data.seq_len`` tokens each), split into training and validation.

    Raises:
        ValueError: fewer than two sentences, or a split that leaves either side empty.
    """

    kind = "distill"

    def __init__(self, data: SentenceData, tokenizer):
        sentences = load_sentences(data.dataset)
        if data.max_sentences is not None:
            sentences = sentences[: data.max_sentences]
        if len(sentences) < 2:
            raise ValueError(f"data.dataset={data.dataset!r} gives {len(sentences)} sentence(s); distillation needs at "
                             "least 2 (one to train on, one to validate)")
        ids = tokenizer.encode(sentences)
        seq_len = data.seq_len
        self.seqs = [s[:seq_len - 1] + s[-1:] if len(s) > seq_len else s for s in ids]  # keep the closing [SEP]
        every = max(2, round(1 / data.val_fraction))
        self.val_idx = np.arange(0, len(self.seqs), every)
        self.train_idx = np.setdiff1d(np.arange(len(self.seqs)), self.val_idx)
        if len(self.train_idx) == 0:
            raise ValueError("no sentence is left to train on; lower data.val_fraction")
        self.tok, self.tokenizer = tokenizer, TeacherTokenizer(tokenizer)
        self.seq_len = int(np.mean([len(s) for s in self.seqs]))  # the trainer's tokens/s counts mean lengths
        self.vocab_size = tokenizer.vocab_size
        self.num_sentences = len(self.seqs)

    def batch_of(self, idx: np.ndarray) -> dict[str, Tensor]:
        """``{"ids": (B, T) long, "mask": (B, T) bool}``, right-padded to the longest of the batch."""
        ids, mask = self.tok.pad([self.seqs[i] for i in idx])
        return {"ids": ids, "mask": mask}

    def sampler(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                grad_accum: int = 1) -> "SentenceSampler":
        return SentenceSampler(self, batch_size, seed)

    def eval_batches(self, batch_size: int, num_batches: int, rank: int = 0, world_size: int = 1) -> list[dict]:
        chunks = [self.val_idx[i:i + batch_size] for i in range(0, len(self.val_idx), batch_size)]
        return [self.batch_of(c) for c in chunks[:num_batches]]


class SentenceSampler:
    """Batches of training sentences in a seeded order per epoch; ``state_dict`` is the position."""

    def __init__(self, feed: SentenceFeed, batch_size: int, seed: int):
        self.feed, self.batch_size, self.seed, self.position = feed, batch_size, seed, 0

    def next(self) -> dict[str, Tensor]:
        n = len(self.feed.train_idx)
        per_epoch = max(1, n // self.batch_size)
        epoch, i = divmod(self.position, per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        self.position += 1
        take = order[i * self.batch_size:(i + 1) * self.batch_size]
        return self.feed.batch_of(self.feed.train_idx[take])

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
