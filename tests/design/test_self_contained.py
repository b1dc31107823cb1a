"""The repository explains itself: no file points to documents a reader of the repository cannot follow
(specification files kept elsewhere, issue numbers, numbered project rules, a design brief outside the repo).

Paper citations (authors, year, arXiv id) are fine; rules are stated in place or linked into ``docs/``.
The pattern is written with character classes so that this file does not match itself.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE_REFERENCES = re.compile(
    r"\.\./share[d]|\bspe[c]s?/|\bspe[c](?:\s+section)?\s+\d|\bissu[e]\s+\d+|hous[e]\s+rule|(?-i:DESIG[N]\.md)",
    re.IGNORECASE,
)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".c", ".h", ".txt", ".cfg", ".ini", ""}


def tracked_text_files() -> list[Path]:
    """Files git tracks (or would track) in the repository, text kinds only."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (git ls-files failed): nothing to list")
    files = [ROOT / line for line in out.splitlines() if line]
    return [f for f in files if f.is_file() and (f.suffix in TEXT_SUFFIXES or f.name == "Makefile")]


def test_the_pattern_finds_what_it_should():
    # written in pieces, so that these lines do not match the pattern themselves
    for text in ("see ../" + "shared/x.md", "(sp" + "ec 14)", "sp" + "ec section 0", "iss" + "ue 6",
                 "(hou" + "se rule 3)", "the DES" + "IGN.md brief"):
        assert OUTSIDE_REFERENCES.search(text), text
    for text in ("Vaswani et al. 2017", "see docs/design.md", "find_spec(name)", "a spec: int", "tissue 3",
                 "ArchSpec(...)"):
        assert not OUTSIDE_REFERENCES.search(text), text


def test_no_file_points_outside_the_repository():
    found = []
    for path in tracked_text_files():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(ROOT).as_posix()
        found += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(lines, 1) if OUTSIDE_REFERENCES.search(line)]
    assert not found, "state the rule in place or link into docs/:\n" + "\n".join(found)
