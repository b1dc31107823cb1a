"""Reading a YAML file that must hold a mapping (run configs, compare files), with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import yaml


def load_yaml(path: str | os.PathLike, what: str) -> dict:
    """The mapping at the top of YAML file ``path`` (an empty file is ``{}``).

    Args:
        what: what the file should hold, for the error message (``"a mapping with sections 'compare' and
            'base'"``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read (permissions, not UTF-8), is not valid YAML (the message gives the
            line and column), or its top level is not a mapping. One line, naming the file.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{p} not found; it should hold {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {p}: {e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{p} is not valid YAML: {_one_line(e)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{p} must be {what}, got a {type(raw).__name__}")
    return raw


def _one_line(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(e).split())
