"""Text tokenizers from a checkpoint's ``tokenizer.json`` (Hugging Face ``tokenizers``, Rust, no Python loop).

Padding and truncation stored in ``tokenizer.json`` are replaced by attnlab's own: sequences come back
unpadded (the packed encoder path needs no pads) and truncated to ``max_length`` tokens including the
special tokens, the same rule sentence-transformers and transformers apply.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

TOKENIZER_FILE = "tokenizer.json"


class TextTokenizer:
    """Wraps a ``tokenizers.Tokenizer``: text -> lists of ids (special tokens added, truncated).

    Args:
        tokenizer: the loaded tokenizer.
        max_length: longest output in tokens (the model's ``max_seq_len`` or less).
        pad_id: id used by :meth:`pad`.

    Raises:
        ValueError: ``max_length < 1``, or texts that are not a list of strings.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_id: int = 0):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = pad_id
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)

    @classmethod
    def from_folder(cls, folder: str | Path, model_max_len: int) -> "TextTokenizer | None":
        """The folder's tokenizer, or ``None`` when it has no ``tokenizer.json``.

        ``max_length`` = the smallest of ``model_max_len``, sentence-transformers' ``max_seq_length``
        (``sentence_bert_config.json``) and ``model_max_length`` in ``tokenizer_config.json``.

        Raises:
            ValueError: ``tokenizer.json`` is not a tokenizer the ``tokenizers`` library can read (names it).
        """
        folder = Path(folder)
        if not (folder / TOKENIZER_FILE).is_file():
            return None
        try:
            tok = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for any bad file
            raise ValueError(f"{folder / TOKENIZER_FILE} is not a readable tokenizer ({e}); it is damaged or from "
                             "an unsupported tokenizers version: copy or export it again") from None
        limits = [model_max_len]
        for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
            value = _json_field(folder / name, key)
            if isinstance(value, (int, float)) and 0 < value < 1e9:
                limits.append(int(value))
        pad = _json_field(folder / TOKENIZER_FILE, "padding")
        pad_id = pad.get("pad_id", 0) if isinstance(pad, dict) else 0
        if pad_id == 0 and tok.token_to_id("[PAD]") is not None:
            pad_id = tok.token_to_id("[PAD]")
        return cls(tok, min(limits), pad_id)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, special tokens included, at most ``max_length`` each."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a list of strings (wrap a single string in a list)")
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def pad(self, seqs: list[list[int]], device=None) -> tuple[Tensor, Tensor]:
        """Right-pad to the longest: ``ids (B, T)`` long and ``key_padding_mask (B, T)`` bool (True = token)."""
        T = max((len(s) for s in seqs), default=0)
        ids = torch.full((len(seqs), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.bool)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[b, : len(s)] = True
        return ids.to(device), mask.to(device)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"


def _json_field(path: Path, key: str):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(key)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
