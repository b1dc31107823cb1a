"""Find the fenced examples of the Markdown docs and the references in their prose (``test_examples.py``
runs and checks them).

A block is a fenced code block whose info string names a language we run:

- ``python`` / ``py``: executed in one namespace per document, in document order;
- ``bash`` / ``sh`` / ``shell``: a bash script (``set -eo pipefail``, traced with ``-x``);
- ``console``: ``$ command`` lines are run one by one; every other non-empty line is output that must
  appear in what the commands print (``...`` matches anything), so shown output cannot drift;
- ``yaml`` / ``yml``: a run recipe, validated with ``attnlab.config.load_config`` but not trained.

Other fences (plain output, ``text``) are not examples. A block that must not run is preceded, on the
line right before its opening fence, by ``<!-- not-run: reason -->``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LANGUAGES = {"python": "python", "py": "python", "bash": "shell", "sh": "shell", "shell": "shell",
             "console": "console", "yaml": "yaml", "yml": "yaml"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:\s*(?P<reason>.*?)\s*-->\s*$")
NOT_RUN_LOOSE = re.compile(r"^\s*<!--\s*not-run\b")  # a marker line (mentions in running text are fine)


@dataclass(frozen=True)
class Block:
    doc: str            # path relative to the repository, e.g. "README.md"
    line: int           # 1-based line of the opening fence
    lang: str           # info string as written ("python", "bash", ...)
    kind: str           # "python", "shell", "console" or "yaml"
    code: str           # the body, dedented by the fence's indentation
    not_run: str | None  # reason from <!-- not-run: ... -->, else None

    @property
    def id(self) -> str:
        return f"{self.doc}:L{self.line}"


def doc_files(root: Path) -> list[Path]:
    """README.md and every docs/*.md (generated ones included), in a fixed order."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def extract_blocks(path: Path, root: Path) -> tuple[list[Block], list[str]]:
    """The runnable blocks of one Markdown file, and problems found on the way (stray or malformed
    not-run markers, unterminated fences) as ``"doc:Lnn: message"`` strings."""
    rel = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    used_markers: set[int] = set()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[i])
            if close:
                break
            text = lines[i]
            body.append(text[len(indent):] if text.startswith(indent) else text.lstrip())
            i += 1
        else:
            problems.append(f"{rel}:L{start + 1}: fence never closed")
        i += 1
        marker = NOT_RUN.match(lines[start - 1]) if start > 0 else None
        if marker:
            used_markers.add(start - 1)
        kind = LANGUAGES.get(info)
        if kind is None:
            if marker:
                problems.append(f"{rel}:L{start}: not-run marker before a {info or 'plain'} fence, which never runs")
            continue
        blocks.append(Block(rel, start + 1, info, kind, "\n".join(body) + "\n",
                            marker["reason"] if marker else None))
    for n, text in enumerate(lines):
        if n in used_markers:
            if not NOT_RUN.match(text)["reason"]:
                problems.append(f"{rel}:L{n + 1}: not-run marker without a reason")
        elif NOT_RUN_LOOSE.search(text):
            problems.append(f"{rel}:L{n + 1}: not-run marker that is not on the line right before a fence "
                            "(write `<!-- not-run: reason -->` alone on that line)")
    return blocks, problems


def console_commands(code: str) -> tuple[list[str], list[str]]:
    """``$ `` commands (with backslash continuations) and the expected output lines of a console block."""
    commands: list[str] = []
    expected: list[str] = []
    continuing = False
    for text in code.splitlines():
        if continuing:
            commands[-1] += "\n" + text
            continuing = text.rstrip().endswith("\\")
        elif text.startswith("$ "):
            commands.append(text[2:])
            continuing = text.rstrip().endswith("\\")
        elif text.strip():
            expected.append(text.strip())
    return commands, expected


def output_pattern(expected_line: str) -> re.Pattern:
    """A shown output line as a pattern: literal text, ``...`` = anything, runs of spaces = any spaces."""
    parts = [r"\s+".join(re.escape(w) for w in piece.split()) for piece in expected_line.split("...")]
    return re.compile(".*".join(parts))


# --- references from the prose to the repository and the package -------------------------------------------

CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
REPO_PATH = re.compile(r"(?<![\w/.:-])((?:src/)?(?:attnlab|tests|configs|benchmarks|docs)/[\w./*-]*[\w*]"
                       r"|(?:csrc|attention|native|models|data|train|interop)/[\w./*-]*\.(?:py|c|h))")
DOTTED = re.compile(r"(?<![\w.])attnlab(?:\.\w+)+")


def prose_references(path: Path) -> list[tuple[int, str, str]]:
    """``(line, kind, text)`` for every repository path (``kind="path"``, in code spans and relative links)
    and every dotted ``attnlab.`` name (``kind="name"``, in code spans) outside fenced blocks.
    Placeholders (``<family>``) and run outputs (``runs/...``) are left out."""
    refs = []
    in_fence = None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line)
        if fence and (in_fence is None or fence["fence"][0] == in_fence):
            in_fence = None if in_fence else fence["fence"][0]
            continue
        if in_fence:
            continue
        for span in CODE_SPAN.findall(line):
            if "<" in span:
                continue
            refs += [(n, "path", p) for p in REPO_PATH.findall(span)]
            refs += [(n, "name", d) for d in DOTTED.findall(span)]
        refs += [(n, "path", link) for link in LINK.findall(line) if "://" not in link]
    return refs


def path_exists(text: str, doc: Path, root: Path) -> bool:
    """A path as the docs write it: from the repository root, from ``src/`` or ``src/attnlab/`` (module
    paths such as ``attnlab/train/trainer.py`` or ``attention/kernels/``), from ``src/attnlab/native/`` for
    ``csrc/``, or relative to the document (links); ``*`` globs."""
    bases = [root, root / "src", root / "src" / "attnlab", root / "src" / "attnlab" / "native", doc.parent]
    for base in bases:
        if "*" in text:
            if any(base.glob(text)):
                return True
        elif (base / text).exists():
            return True
    return False


def name_resolves(dotted: str) -> bool:
    """``attnlab.a.b.c``: the longest importable module prefix, then attributes."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False
