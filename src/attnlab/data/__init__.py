"""Datasets and loaders. Text LM data (char/byte) lives here; embedded sources in :mod:`.sources`.

One folder per modality: ``text/`` (corpora, tokenizers, sentiment), ``vision/`` (images),
``synthetic/`` (seeded generators). The comparison suite's datasets are looked up by name in
:mod:`.registry`; their containers are in :mod:`.base`.
"""

from . import synthetic, vision  # noqa: F401  (register their datasets; text registers on the import below)
from .base import IGNORE_INDEX, DatasetKind, SuiteDataset, SuiteSplit
from .registry import (DATASETS, DatasetSpec, dataset_options, describe_datasets, get_dataset, list_datasets,
                       register_dataset)
from .sources import SOURCES, describe_sources, list_sources, source_path
from .text import LMData, WindowSampler, build_lm_data, eval_batches, load_text, sequential_batches, split_tokens
from .text.tokenizers import ByteTokenizer, CharTokenizer, load_tokenizer, save_tokenizer

__all__ = [
    "DATASETS", "IGNORE_INDEX", "DatasetKind", "DatasetSpec", "SuiteDataset", "SuiteSplit", "dataset_options",
    "describe_datasets", "get_dataset", "list_datasets", "register_dataset",
    "SOURCES", "ByteTokenizer", "CharTokenizer", "LMData", "WindowSampler", "build_lm_data", "describe_sources",
    "eval_batches", "list_sources", "load_text", "load_tokenizer", "save_tokenizer", "sequential_batches",
    "source_path", "split_tokens",
]
