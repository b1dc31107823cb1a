"""attnlab.core.yamlfile.load_yaml: a mapping or a one-line error naming the file."""

from __future__ import annotations

import pytest

from attnlab.core.yamlfile import load_yaml

WHAT = "a mapping with sections 'a' and 'b'"


def one_line_error(path, exc=ValueError) -> str:
    with pytest.raises(exc) as err:
        load_yaml(path, WHAT)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_mapping_and_empty_file(tmp_path):
    (tmp_path / "ok.yaml").write_text("a: 1\nb: {c: [1, 2]}\n")
    assert load_yaml(tmp_path / "ok.yaml", WHAT) == {"a": 1, "b": {"c": [1, 2]}}
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml", WHAT) == {}


def test_errors_name_the_file_in_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("a: [unclosed\nb: 2\n")
    assert "is not valid YAML" in one_line_error(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert f"must be {WHAT}, got a list" in one_line_error(tmp_path / "list.yaml")
    (tmp_path / "latin1.yaml").write_bytes("a: caf\xe9\n".encode("latin-1"))
    assert "cannot read" in one_line_error(tmp_path / "latin1.yaml")
    assert WHAT in one_line_error(tmp_path / "missing.yaml", FileNotFoundError)
