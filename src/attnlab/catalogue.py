"""Generate ``docs/attention.md``: the catalogue of registered attention kernels.

Every row comes from the registry (name, first docstring line, declared capabilities, options with
defaults), so the catalogue cannot drift from the code::

    python -m attnlab.catalogue docs/attention.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from .attention import describe_attention
from .attention.capabilities import LISTED_FLAGS as FLAGS
from .core.io import write_text


def catalogue_markdown() -> str:
    """The catalogue as Markdown: one summary table, then one section per kernel."""
    rows = describe_attention()
    yes = lambda b: "yes" if b else "-"  # noqa: E731
    lines = [
        "# Attention mechanisms in attnlab",
        "",
        "Generated from the registry by `python -m attnlab.catalogue docs/attention.md` (`make docs`).",
        "Build any of them with `build_attention(name, **options)` or `create_model(..., attention=name,",
        "attention_options={...})`. Asking a kernel for something it does not declare raises `CapabilityError`.",
        "",
        "| name | " + " | ".join(FLAGS) + " | complexity |",
        "|---|" + "---|" * (len(FLAGS) + 1),
    ]
    for r in rows:
        caps = r["capabilities"]
        lines.append(f"| `{r['name']}` | " + " | ".join(yes(caps[f]) for f in FLAGS) + f" | {caps['complexity']} |")
    for r in rows:
        opts = ", ".join(f"`{k}={v!r}`" for k, v in r["options"].items()) or "none"
        lines += ["", f"## `{r['name']}`", "", r["summary"], "", f"Options: {opts}"]
        if r["capabilities"].get("requires_grid"):
            lines.append("\nNeeds a 2-D token grid: pass `grid=(rows, cols)`.")
    return "\n".join(lines) + "\n"


def write_catalogue(path: str | Path) -> Path:
    """Atomically write the catalogue to ``path`` (parent folders are created); returns ``path``."""
    return write_text(path, catalogue_markdown())


if __name__ == "__main__":
    print(write_catalogue(sys.argv[1] if len(sys.argv) > 1 else "docs/attention.md"))
