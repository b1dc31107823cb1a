"""Containers shared by every dataset generator and loader of the comparison suite.

A suite dataset is a :class:`SuiteDataset` holding a ``train`` and a ``test`` :class:`SuiteSplit` plus what a model
builder needs to know (``kind``, ``vocab_size`` or ``input_dim``, ``num_classes``, ``seq_len``) and how
it is scored (``metric``). Three kinds exist:

- ``"lm"``: ``inputs (N, T)`` long token ids, ``targets (N, T)`` long, ``loss_mask (N, T)`` bool. A
  causal model reading ``inputs[:, :t + 1]`` predicts ``targets[:, t]``; only positions with
  ``loss_mask`` True are trained and scored (other targets hold ``IGNORE_INDEX``).
- ``"classify"``: ``inputs (N, T)`` long, ``targets (N,)`` long labels, ``key_padding_mask (N, T)``
  bool with True = real token (the attention convention of :class:`AttentionContext`).
- ``"regression"``: ``inputs (N, T, D)`` float, ``targets (N, T)`` float, ``loss_mask (N, T)`` bool.
- ``"seq2seq"``: a :class:`Seq2SeqDataset` of :class:`Seq2SeqSplit` s (source and target token ids) for
  encoder-decoders; its vocabulary starts with ``PAD = 0``, ``BOS = 1``, ``EOS = 2``.

Every generator takes an explicit ``seed``; train and test come from independent child streams of
``numpy.random.SeedSequence(seed)``, so the same seed always gives the same tensors on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

IGNORE_INDEX = -100  # cross_entropy's default ignore_index: unscored target positions hold it
DatasetKind = Literal["lm", "classify", "regression", "seq2seq"]


@dataclass(frozen=True)
class SuiteSplit:
    """One split of a suite dataset. Shapes are listed in the module docstring; ``extras`` holds per-example
    tensors a baseline or an analysis needs (regression ``xs``/``ys``/``w``, ListOps depths, ...)."""

    inputs: Tensor
    targets: Tensor
    loss_mask: Tensor | None = None
    key_padding_mask: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    input_key: str | None = None  # the batch key of ``inputs`` ("spectrogram", "bytes"); None: from their type

    def __post_init__(self):
        n = self.inputs.shape[0]
        for name in ("targets", "loss_mask", "key_padding_mask"):
            t = getattr(self, name)
            if t is not None and t.shape[0] != n:
                raise ValueError(f"{name} has {t.shape[0]} rows but inputs has {n}")

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def subset(self, index: Tensor | slice | list[int]) -> "SuiteSplit":
        """Rows ``index`` of every tensor (extras included)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return replace(self, inputs=self.inputs[index], targets=self.targets[index],
                       loss_mask=pick(self.loss_mask), key_padding_mask=pick(self.key_padding_mask),
                       extras={k: v[index] for k, v in self.extras.items()})

    def to(self, device: torch.device | str) -> "SuiteSplit":
        """A copy with every tensor on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, inputs=self.inputs.to(device), targets=self.targets.to(device),
                       loss_mask=move(self.loss_mask), key_padding_mask=move(self.key_padding_mask),
                       extras={k: v.to(device) for k, v in self.extras.items()})

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        """Rows ``index`` as a training batch: ``{"idx" | "inputs" | "pixels", "targets", ["loss_mask"],
        ["key_padding_mask"]}``.

        Images ``(B, C, H, W)`` are under ``"pixels"``, token inputs under ``"idx"`` (the key of
        :func:`attnlab.objectives.lm.lm_step`, whose cross-entropy already skips ``IGNORE_INDEX`` targets),
        real-valued inputs under ``"inputs"``; a split with an ``input_key`` puts them there (spectrograms
        ``(B, frames, bins)`` under ``"spectrogram"``, file bytes ``(B, L)`` under ``"bytes"``).
        """
        x = self.inputs[index]
        key = self.input_key or ("pixels" if x.dim() == 4 else "inputs" if x.is_floating_point() else "idx")
        out = {key: x, "targets": self.targets[index]}
        if self.loss_mask is not None:
            out["loss_mask"] = self.loss_mask[index]
        if self.key_padding_mask is not None:
            out["key_padding_mask"] = self.key_padding_mask[index]
        return out


@dataclass(frozen=True)
class SuiteDataset:
    """A dataset of the suite: splits, model-facing sizes, metric and vocabulary layout.

    Attributes:
        name: registry name (``get_dataset(name)``).
        kind: ``"lm"``, ``"classify"`` or ``"regression"`` (see module docstring).
        train, test: the splits (``test`` is the validation split of the grokking dataset).
        seq_len: ``T`` of ``inputs``.
        metric: name in :data:`attnlab.objectives.metrics.METRICS`.
        vocab_size: token vocabulary (``None`` for regression).
        num_classes: labels of a classification dataset, else ``None``.
        input_dim: feature width ``D`` of regression inputs, else ``None``.
        label_names: class names of a classification dataset, indexed by label.
        grid: ``(rows, cols)`` when the ``T`` tokens are a row-major 2-D grid (pixel sequences).
        vocab: token name -> id (special tokens and layout), for docs and decoding.
        options: the resolved generator options (reproduce with ``get_dataset(name, **options)``).
        image_shape: ``(C, H, W)`` of an image dataset, whose inputs are ``(N, C, H, W)`` float pixels normalised
            per channel with ``image_norm`` = (means, stds) of the training split; ``seq_len`` is then 1 (one
            example: tokens/s of a run read as images/s).
        audio_shape: ``(frames, mel_bins)`` of a spectrogram dataset (inputs ``(N, frames, bins)`` float, normalised
            as ``(x - mean) / (2 std)`` with ``audio_norm`` = (mean, std) of the training split; ``seq_len`` 1).
        byte_length: the longest file of a bytes dataset (inputs ``(N, L)`` int64 byte values, -1 after the end;
            ``seq_len`` 1).
        val: a validation split the trainer evaluates on while training (else ``test``'s first rows), for
            datasets whose test split is held out in another way (the keyword sets: other voices).
        text_codec: how a text becomes this dataset's token ids (``"bytes"``: UTF-8 bytes; see
            :func:`attnlab.data.text.sentiment.encode_text`), ``None`` when inputs are not text.
    """

    name: str
    kind: DatasetKind
    train: SuiteSplit
    test: SuiteSplit
    seq_len: int
    metric: str
    vocab_size: int | None = None
    num_classes: int | None = None
    input_dim: int | None = None
    grid: tuple[int, int] | None = None
    label_names: tuple[str, ...] = ()
    vocab: dict[str, int] = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    image_shape: tuple[int, int, int] | None = None
    image_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    audio_shape: tuple[int, int] | None = None
    audio_norm: tuple[float, float] | None = None
    byte_length: int | None = None
    val: SuiteSplit | None = None
    text_codec: str | None = None

    @property
    def whole_examples(self) -> bool:
        """Inputs are whole examples (images, spectrograms, files), not token sequences: ``seq_len`` is 1 and the
        model checks its own input size."""
        return self.image_shape is not None or self.audio_shape is not None or self.byte_length is not None


def split_rngs(seed: int, n: int = 2) -> list[np.random.Generator]:
    """``n`` independent numpy Generators derived from ``seed`` (train, test, ...)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(n)]


def sample_without_replacement(rng: np.random.Generator, n: int, population: int, k: int,
                               chunk_elements: int = 1 << 22) -> np.ndarray:
    """``(n, k)`` rows of distinct ints in ``[0, population)``, each row a uniform random k-subset in
    uniformly random order.

    Small ``k`` (``k * k <= population``): draw with replacement and redraw rows holding a repeat
    (rejection keeps every ordered distinct tuple equally likely; a row is kept with probability
    > 0.6). Otherwise the ``k`` smallest of ``population`` iid uniforms index a uniform k-subset
    (``argpartition``), shuffled by a second draw, in chunks of about ``chunk_elements`` values.
    """
    if k > population:
        raise ValueError(f"cannot draw {k} distinct values from {population}")
    if k * k <= population:
        return _rejection_sample(rng, n, population, k)
    out = np.empty((n, k), dtype=np.int64)
    rows = max(1, chunk_elements // max(population, 1))
    for start in range(0, n, rows):
        m = min(rows, n - start)
        noise = rng.random((m, population))
        pick = np.argpartition(noise, k - 1, axis=1)[:, :k] if k < population else np.argsort(noise, axis=1)
        order = np.argsort(rng.random((m, k)), axis=1)  # (m, k) random order within the subset
        out[start:start + m] = np.take_along_axis(pick, order, axis=1)
    return out


def _rejection_sample(rng: np.random.Generator, n: int, population: int, k: int) -> np.ndarray:
    out = rng.integers(0, population, size=(n, k))
    todo = np.arange(n)
    while todo.size:
        s = np.sort(out[todo], axis=1)
        todo = todo[(s[:, 1:] == s[:, :-1]).any(axis=1)]  # rows with a repeated value
        out[todo] = rng.integers(0, population, size=(todo.size, k))
    return out


def check_positive(**values: int) -> None:
    """Raise ``ValueError`` naming every option that is not a positive int."""
    for name, v in values.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def class_files(path: str, suffixes: tuple[str, ...], dataset: str, what: str) -> dict[str, list[Path]]:
    """Class name -> sorted files with one of ``suffixes`` of a user's ``path/<class>/`` folder (``dataset`` and
    ``what`` name them in errors).

    Raises:
        ValueError: no path, a folder that does not exist, fewer than two class folders, a class without files.
    """
    if not path:
        raise ValueError(f"{dataset} needs data.options.path: a folder with one sub-folder of {what} per class")
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{dataset} folder {str(root)!r} does not exist or is not a folder")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(f"{dataset} folder {str(root)!r} has {len(classes)} class sub-folder(s); classification "
                         f"needs at least two (one sub-folder of {what} per class)")
    files = {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in suffixes) for d in classes}
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise ValueError(f"class folder(s) {empty} of {str(root)!r} hold no {what} ({', '.join(suffixes)})")
    return files


def as_bytes(rows: list[bytes]) -> torch.Tensor:
    """Files of equal or different lengths -> ``(N, longest)`` int64 byte values, -1 after each file's end."""
    longest = max(len(r) for r in rows)
    out = torch.full((len(rows), longest), -1, dtype=torch.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.frombuffer(bytearray(r), dtype=torch.uint8).long()
    return out


def long_tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


PAD, BOS, EOS = 0, 1, 2  # the first ids of every seq2seq vocabulary


@dataclass(frozen=True)
class Seq2SeqSplit:
    """One split of a seq2seq dataset: ``src (N, S)`` padded with ``PAD``, ``src_key_padding_mask (N, S)`` (True =
    real token), ``tgt_in (N, T)`` = ``BOS`` + target (``PAD`` after it) and ``tgt_out (N, T)`` = target + ``EOS``
    (``IGNORE_INDEX`` after it)."""

    src: Tensor
    src_key_padding_mask: Tensor
    tgt_in: Tensor
    tgt_out: Tensor

    def batch(self, index: Tensor | slice) -> dict[str, Tensor]:
        """Rows ``index`` as the batch dict the seq2seq objective takes."""
        return {"src": self.src[index], "src_key_padding_mask": self.src_key_padding_mask[index],
                "tgt_in": self.tgt_in[index], "tgt_out": self.tgt_out[index]}

    def targets(self, index: Tensor | slice = slice(None)) -> list[list[int]]:
        """The target sequences of rows ``index`` without ``EOS`` and padding."""
        return [[t for t in row if t >= 0][:-1] for row in self.tgt_out[index].tolist()]

    def __len__(self) -> int:
        return self.src.shape[0]


@dataclass(frozen=True)
class Seq2SeqDataset:
    """A sequence-to-sequence dataset (``kind = "seq2seq"``): splits, vocabulary size, the special ids and
    ``decode`` (ids -> text, for reports and the character error rate). ``seq_len`` is the longest source or
    target (with ``BOS``/``EOS``)."""

    name: str
    train: Seq2SeqSplit
    test: Seq2SeqSplit
    vocab_size: int
    decode: Callable[[list[int]], str]
    metric: str = "exact_match"
    options: dict = field(default_factory=dict)
    kind: DatasetKind = "seq2seq"
    bos_id: int = BOS
    eos_id: int = EOS
    pad_id: int = PAD

    @property
    def seq_len(self) -> int:
        return max(self.train.src.shape[1], self.train.tgt_in.shape[1], self.test.src.shape[1],
                   self.test.tgt_in.shape[1])


def pack_pairs(pairs: list[tuple[list[int], list[int]]]) -> Seq2SeqSplit:
    """``(source ids, target ids)`` pairs -> a padded :class:`Seq2SeqSplit` (see its docstring).

    Raises:
        ValueError: no pairs, or an empty source.
    """
    if not pairs or any(not s for s, _ in pairs):
        raise ValueError("a seq2seq split needs at least one pair, and every source at least one token")
    S = max(len(s) for s, _ in pairs)
    T = max(len(t) for _, t in pairs) + 1
    src = np.full((len(pairs), S), PAD)
    tgt_in = np.full((len(pairs), T), PAD)
    tgt_out = np.full((len(pairs), T), IGNORE_INDEX)
    for i, (s, t) in enumerate(pairs):
        src[i, : len(s)] = s
        tgt_in[i, : len(t) + 1] = [BOS, *t]
        tgt_out[i, : len(t) + 1] = [*t, EOS]
    src_t = long_tensor(src)
    return Seq2SeqSplit(src_t, src_t != PAD, long_tensor(tgt_in), long_tensor(tgt_out))
