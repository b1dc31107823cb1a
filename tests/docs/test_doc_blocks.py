"""The block finder itself, on small Markdown texts: what counts as an example, markers, console output."""

from __future__ import annotations

from pathlib import Path

from doc_blocks import console_commands, extract_blocks, output_pattern, prose_references

DOC = """# Title

```python
x = 1
```

<!-- not-run: takes two hours -->
```bash
make results
```

  ```sh
  echo indented
  ```

```
plain output, not an example
```

````console
$ attnlab list \\
    models
gpt-tiny ...
````

<!-- not-run: nothing follows -->

Text naming `attnlab/train/trainer.py`, `attnlab.native.native_status()` and [a doc](docs/results.md);
`models/<family>/presets.py` is a placeholder and `<!-- not-run: x -->` in running text is no marker.
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


def test_blocks_kinds_lines_and_markers(tmp_path):
    blocks, problems = extract_blocks(_write(tmp_path, DOC), tmp_path)
    assert [(b.id, b.kind, b.not_run) for b in blocks] == [
        ("README.md:L3", "python", None),
        ("README.md:L8", "shell", "takes two hours"),
        ("README.md:L12", "shell", None),
        ("README.md:L20", "console", None),
    ]
    assert blocks[0].code == "x = 1\n"
    assert blocks[2].code == "echo indented\n"  # dedented by the fence's indentation
    assert problems == ["README.md:L26: not-run marker that is not on the line right before a fence "
                        "(write `<!-- not-run: reason -->` alone on that line)"]


def test_marker_problems(tmp_path):
    text = "<!-- not-run: -->\n```python\npass\n```\n<!-- not-run: plain -->\n```\nout\n```\n```bash\nopen\n"
    _, problems = extract_blocks(_write(tmp_path, text), tmp_path)
    assert sorted(problems) == [
        "README.md:L1: not-run marker without a reason",
        "README.md:L5: not-run marker before a plain fence, which never runs",
        "README.md:L9: fence never closed",
    ]


def test_console_commands_and_output_patterns():
    commands, expected = console_commands("$ a \\\n  b\nshown ... output\n\n$ c\n")
    assert commands == ["a \\\n  b", "c"]
    assert expected == ["shown ... output"]
    pattern = output_pattern("error: key 'x'. Did you mean y? Valid: a, ...")
    assert pattern.search("prog: error: key 'x'. Did you mean  y? Valid: a, b, c")
    assert not pattern.search("error: key 'z'. Did you mean y? Valid: a, b")


def test_prose_references(tmp_path):
    refs = prose_references(_write(tmp_path, DOC))
    assert [(kind, text) for _, kind, text in refs] == [
        ("path", "attnlab/train/trainer.py"), ("name", "attnlab.native.native_status"), ("path", "docs/results.md"),
    ]
