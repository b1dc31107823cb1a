"""Text language-modelling data: load a text (embedded or a file), tokenize, split train/val, cut windows.

Batches are seeded random windows ``idx = tokens[o : o+T]``, ``targets = tokens[o+1 : o+T+1]``. The
windows of optimizer step ``s`` are a pure function of ``(seed, s)``, so the sampler's position is just
a counter (resumable bit-exactly), and rank ``r`` of ``W`` processes takes rows ``r::W`` of the global batch
(disjoint streams whose union is exactly the single-process batch of ``W`` times the size).
See :class:`WindowSampler` for how gradient accumulation fits in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..sources import SOURCES, list_sources, source_path
from .subword import SUBWORD_KINDS, SubwordTokenizer
from .tokenizers import ByteTokenizer, CharTokenizer, Tokenizer, load_tokenizer

EVAL_SEED = 20240917  # validation windows do not depend on train.seed, so runs compare on the same windows
NUM_SPLIT_CHUNKS = 100


def load_text(dataset: str, as_bytes: bool = False) -> str | bytes:
    """The raw text of an embedded text dataset (``kjv``) or of a file path.

    Raises:
        FileNotFoundError: neither an embedded dataset nor an existing file (or the package is missing;
            the message gives the install command).
        ValueError: the file is empty, or not UTF-8 while a string is wanted.
    """
    if dataset in SOURCES:
        if SOURCES[dataset].kind != "text":
            raise ValueError(f"embedded dataset {dataset!r} is {SOURCES[dataset].kind} data, not text; "
                             f"text datasets: {list_sources('text')}")
        text = _read_kjv(source_path(dataset)) if dataset == "kjv" else source_path(dataset).read_text("utf-8")
        return text.encode("utf-8") if as_bytes else text
    path = Path(dataset).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data.dataset={dataset!r} is neither an embedded text dataset "
                                f"({list_sources('text')}) nor an existing file; give a path to a UTF-8 text file")
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"text file {str(path)!r} is empty; give a file with text in it")
    if as_bytes:
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(path)!r} is not UTF-8 (byte {e.start}: {e.reason}); "
                         "convert it to UTF-8 or use data.tokenizer=byte") from None


def _read_kjv(path: Path) -> str:
    """One verse per line (the ``text`` field of each JSON line)."""
    with path.open(encoding="utf-8") as f:
        return "".join(json.loads(line)["text"] + "\n" for line in f if line.strip())


def split_tokens(tokens: np.ndarray, val_fraction: float, mode: str = "interleaved") -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/val split of a 1-D token array.

    ``interleaved`` cuts the array into 100 equal chunks and sends chunk ``i`` to validation when
    ``floor((i+1) f) > floor(i f)`` (exactly ``100 f`` chunks spread evenly over the text, so validation
    covers every part of an ordered corpus such as the Bible); ``tail`` holds out the last ``f``.

    Raises:
        ValueError: unknown mode.
    """
    n = len(tokens)
    if mode == "tail":
        cut = n - int(round(n * val_fraction))
        return tokens[:cut], tokens[cut:]
    if mode != "interleaved":
        raise ValueError(f"unknown split {mode!r}; valid: ['interleaved', 'tail']")
    bounds = np.linspace(0, n, NUM_SPLIT_CHUNKS + 1).astype(np.int64)
    is_val = [int((i + 1) * val_fraction) > int(i * val_fraction) for i in range(NUM_SPLIT_CHUNKS)]
    parts = {True: [], False: []}
    for i in range(NUM_SPLIT_CHUNKS):
        parts[is_val[i]].append(tokens[bounds[i]:bounds[i + 1]])
    return np.concatenate(parts[False]), np.concatenate(parts[True])


@dataclass
class LMData:
    """Tokenized train/val splits and the tokenizer. Build with :func:`build_lm_data`."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    seq_len: int

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def build_lm_data(dataset: str, tokenizer: str = "char", seq_len: int = 256, val_fraction: float = 0.1,
                  split: str = "interleaved", vocab_size: int = 8000) -> LMData:
    """Load, tokenize and split a text.

    ``tokenizer``: ``char`` (the characters present), ``byte`` (UTF-8 bytes), a kind trained on the training
    split only with at most ``vocab_size`` ids (``bpe``, ``wordpiece``, ``unigram``, ``word``; see
    :mod:`.subword`), or the path of an existing ``tokenizer.json``.

    Raises:
        FileNotFoundError / ValueError: see :func:`load_text`; an unknown tokenizer (neither a kind nor a file);
            a split shorter than ``seq_len + 1`` tokens (the message says how long the text is and what to change).
    """
    if tokenizer == "char":
        text = load_text(dataset)
        tok: Tokenizer = CharTokenizer.fit(text)
        train, val = split_tokens(tok.encode(text).astype(np.int32), val_fraction, split)
    elif tokenizer == "byte":
        tok = ByteTokenizer()
        train, val = split_tokens(tok.encode(load_text(dataset, as_bytes=True)).astype(np.int32), val_fraction, split)
    else:
        tok, train, val = _trained_or_loaded(dataset, tokenizer, val_fraction, split, vocab_size)
    need = seq_len + 1
    for name, part in (("train", train), ("validation", val)):
        if len(part) < need:
            raise ValueError(
                f"dataset {dataset!r} is too short: {len(train) + len(val)} tokens give a {name} split of {len(part)} "
                f"tokens, but data.seq_len={seq_len} needs at least {need}; use a longer text, a smaller data.seq_len"
                + (" or a larger data.val_fraction" if name == "validation" else "")
            )
    return LMData(train=train, val=val, tokenizer=tok, seq_len=seq_len)


def _trained_or_loaded(dataset: str, tokenizer: str, val_fraction: float, split: str,
                       vocab_size: int) -> tuple[Tokenizer, np.ndarray, np.ndarray]:
    """Split the text by characters first, then train the tokenizer on the training part only (or load one)."""
    if tokenizer not in SUBWORD_KINDS and not Path(tokenizer).is_file():
        raise ValueError(f"unknown tokenizer {tokenizer!r}; valid: {['char', 'byte', *SUBWORD_KINDS]} or the path of "
                         "an existing tokenizer.json")
    codes = np.frombuffer(load_text(dataset).encode("utf-32-le"), dtype=np.uint32)
    train_text, val_text = (part.tobytes().decode("utf-32-le") for part in split_tokens(codes, val_fraction, split))
    if tokenizer in SUBWORD_KINDS:
        tok = SubwordTokenizer.fit(tokenizer, train_text.splitlines(), vocab_size)
    else:
        tok = load_tokenizer(tokenizer)

    def encode(text: str) -> np.ndarray:
        ids = tok.encode_lines(text) if isinstance(tok, SubwordTokenizer) else tok.encode(text)
        return ids.astype(np.int32)

    return tok, encode(train_text), encode(val_text)


class WindowSampler:
    """Seeded random windows; the global batch of optimizer step ``s`` is a pure function of ``(seed, s)``.

    Step ``s`` draws ``G = batch_size * world_size * grad_accum`` window starts from
    ``default_rng([seed, s])``. Micro-batch ``m`` covers rows ``[m*B*W, (m+1)*B*W)`` of them and rank
    ``r`` takes every ``W``-th row of that slice, from row ``r``. So 2 ranks with batch ``b``, 1 rank
    with batch ``2b`` and 1 rank with batch ``b`` and ``grad_accum=2`` all train on the same windows.

    Args:
        tokens: 1-D token array of one split.
        seq_len: window length ``T``.
        batch_size: rows per micro-batch per process (``B``).
        seed: stream seed.
        rank, world_size: this process's rank ``r`` among ``W``.
        grad_accum: micro-batches per optimizer step.

    ``next()`` returns ``{"idx": (B, T), "targets": (B, T)}`` int64 tensors; ``state_dict()`` is JSON.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, grad_accum: int = 1):
        if len(tokens) < seq_len + 1:
            raise ValueError(f"{len(tokens)} tokens are too few for windows of seq_len={seq_len} (need {seq_len + 1})")
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.seed, self.rank, self.world_size, self.grad_accum = seed, rank, world_size, grad_accum
        self.position = 0  # micro-batches consumed

    def batch(self, step: int, micro: int = 0) -> dict[str, Tensor]:
        """Micro-batch ``micro`` of optimizer step ``step`` for this rank (does not move the position)."""
        per_micro = self.batch_size * self.world_size
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=per_micro * self.grad_accum)
        starts = starts[micro * per_micro:(micro + 1) * per_micro][self.rank::self.world_size]  # (B,)
        rows = self.tokens[starts[:, None] + np.arange(self.seq_len + 1)]  # (B, T+1)
        t = torch.from_numpy(rows.astype(np.int64))
        return {"idx": t[:, :-1], "targets": t[:, 1:]}

    def next(self) -> dict[str, Tensor]:
        b = self.batch(*divmod(self.position, self.grad_accum))
        self.position += 1
        return b

    def state_dict(self) -> dict:
        return {"seed": self.seed, "position": self.position, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "world_size": self.world_size, "grad_accum": self.grad_accum}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; raises ``ValueError`` if the stream itself would differ."""
        for key in ("seed", "seq_len", "batch_size", "world_size", "grad_accum"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"checkpoint sampler has {key}={state.get(key)} but this run has {getattr(self, key)}; "
                                 "resume with the same data settings and number of processes")
        self.position = int(state["position"])


def eval_batches(tokens: np.ndarray, seq_len: int, batch_size: int, num_batches: int,
                 rank: int = 0, world_size: int = 1) -> list[dict[str, Tensor]]:
    """The fixed validation batches used during training (seeded by :data:`EVAL_SEED`)."""
    sampler = WindowSampler(tokens, seq_len, batch_size, EVAL_SEED, rank, world_size)
    return [sampler.batch(i) for i in range(num_batches)]


def sequential_batches(tokens: np.ndarray, seq_len: int, batch_size: int):
    """Non-overlapping windows covering ``tokens`` once (each token predicted once), for a full evaluation.

    Yields ``{"idx", "targets"}`` batches; the last window may be shorter than ``seq_len``.
    """
    n = len(tokens) - 1
    starts = list(range(0, n, seq_len))
    for b in range(0, len(starts), batch_size):
        group = starts[b:b + batch_size]
        full = [s for s in group if s + seq_len <= n]
        if full:
            rows = tokens[np.array(full)[:, None] + np.arange(seq_len + 1)].astype(np.int64)  # (B, T+1)
            t = torch.from_numpy(rows)
            yield {"idx": t[:, :-1], "targets": t[:, 1:]}
        for s in group:
            if s + seq_len > n:
                t = torch.from_numpy(tokens[s:n + 1].astype(np.int64))[None]  # (1, n-s+1)
                yield {"idx": t[:, :-1], "targets": t[:, 1:]}
