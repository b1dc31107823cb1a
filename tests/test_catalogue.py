"""docs/attention.md is generated from the registry and must match it (run `make docs` after adding a kernel)."""

from pathlib import Path

from attnlab.attention import list_attention
from attnlab.catalogue import catalogue_markdown, write_catalogue

DOC = Path(__file__).resolve().parents[1] / "docs" / "attention.md"


def test_catalogue_lists_every_kernel_once():
    text = catalogue_markdown()
    for name in list_attention():
        assert text.count(f"## `{name}`") == 1
        assert f"| `{name}` |" in text


def test_committed_catalogue_is_current():
    assert DOC.read_text() == catalogue_markdown(), "docs/attention.md is stale: run `make docs`"


def test_write_catalogue_is_atomic_and_complete(tmp_path):
    out = write_catalogue(tmp_path / "sub" / "attention.md")
    assert out.read_text() == catalogue_markdown()
    assert not list(out.parent.glob("*.tmp"))
