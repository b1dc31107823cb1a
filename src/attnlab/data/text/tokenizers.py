"""Tokenizers of text runs, saved as ``tokenizer.json`` in the run directory so evaluation and generation decode
with the same vocabulary: character and byte level here, subword and word level trained on the corpus in
:mod:`.subword` (saved in the standard ``tokenizers`` format)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...core.io import write_text
from .subword import SubwordTokenizer, is_tokenizer_file


class CharTokenizer:
    """Vocabulary = the characters present in the text, in code-point order (id i = i-th character).

    Raises:
        ValueError: encoding a character outside the vocabulary (the message lists which ones).
    """

    kind = "char"
    unit = "char"

    def __init__(self, chars: list[str]):
        if not chars:
            raise ValueError("a character vocabulary needs at least one character")
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}
        if len(self.index) != len(self.chars):
            raise ValueError("character vocabulary has duplicates")
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.int64)  # sorted code points

    @classmethod
    def fit(cls, text: str) -> "CharTokenizer":
        codes = np.unique(_code_points(text))
        return cls([chr(int(c)) for c in codes])

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """``text`` -> ``(len(text),)`` int64 ids."""
        codes = _code_points(text)
        ids = np.searchsorted(self._codes, codes)
        ids = np.minimum(ids, len(self._codes) - 1)
        bad = self._codes[ids] != codes
        if bad.any():
            missing = sorted({chr(int(c)) for c in codes[bad]})
            raise ValueError(f"characters {missing[:20]} are not in the vocabulary of {self.vocab_size} characters; "
                             "use only characters from the training text or train with data.tokenizer=byte")
        return ids.astype(np.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class ByteTokenizer:
    """UTF-8 bytes, vocabulary 256; decoding replaces invalid byte sequences with U+FFFD."""

    kind = "byte"
    unit = "byte"
    vocab_size = 256

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else text
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind}


Tokenizer = CharTokenizer | ByteTokenizer | SubwordTokenizer


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Inverse of ``to_dict``; raises ``ValueError`` for an unknown ``kind``."""
    if is_tokenizer_file(d):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return SubwordTokenizer(HFTokenizer.from_str(json.dumps(d)))
        except Exception as e:  # the library raises a bare Exception for malformed content
            raise ValueError(f"not a tokenizer the tokenizers library can read: {e}") from None
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "byte":
        return ByteTokenizer()
    raise ValueError(f"unknown tokenizer kind {kind!r}; valid: ['byte', 'char'] or a tokenizers tokenizer.json")


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """Write ``tok`` as JSON to ``path``, atomically."""
    write_text(path, json.dumps(tok.to_dict(), ensure_ascii=False))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read ``tokenizer.json``; raises ``FileNotFoundError`` / ``ValueError`` with the path."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer file {str(p)!r} not found; is this a run directory written by `attnlab train`?")
    try:
        return tokenizer_from_dict(json.loads(p.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{p} is not a valid tokenizer file: {e}") from None
