"""Tokenizers trained on the user's corpus with the Hugging Face ``tokenizers`` library.

Kinds (``data.tokenizer``):

- ``bpe``: byte-level byte-pair encoding (Sennrich et al. 2016; GPT-2's byte-level variant, Radford et al.
  2019): lossless, any text encodes.
- ``wordpiece``: WordPiece (Schuster & Nakajima 2012; BERT, Devlin et al. 2019), lower-case-preserving,
  whitespace and punctuation pre-split, ``[UNK]`` for characters never seen.
- ``unigram``: the unigram language-model tokenizer (Kudo 2018, SentencePiece-style ``▁`` word marks).
- ``word``: one id per whitespace-separated word (event sequences: one patient or session per line,
  space-separated codes); words outside the vocabulary become ``[UNK]``.

A trained tokenizer is saved as a standard ``tokenizer.json`` (what ``tokenizers.Tokenizer.from_file`` and
``transformers`` read), so a run folder's tokenizer can be reused elsewhere and vice versa.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

SUBWORD_KINDS = ("bpe", "wordpiece", "unigram", "word")
UNK = "[UNK]"
_MODEL_KIND = {"BPE": "bpe", "WordPiece": "wordpiece", "Unigram": "unigram", "WordLevel": "word"}


class SubwordTokenizer:
    """A trained ``tokenizers`` tokenizer behind attnlab's tokenizer interface (``encode``, ``decode``,
    ``vocab_size``, ``to_dict``).

    Raises:
        ValueError: an unknown kind, a vocabulary size too small for the corpus, or an empty corpus (at fit).
    """

    unit = "token"

    def __init__(self, tokenizer: HFTokenizer):
        self.hf = tokenizer
        spec = json.loads(tokenizer.to_str())
        self.kind = _MODEL_KIND.get(spec.get("model", {}).get("type"), "subword")

    @classmethod
    def fit(cls, kind: str, texts: Iterable[str], vocab_size: int) -> "SubwordTokenizer":
        """Train a ``kind`` tokenizer with at most ``vocab_size`` ids on ``texts`` (lines or documents)."""
        if kind not in SUBWORD_KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}; valid: {['char', 'byte', *SUBWORD_KINDS]} or the path "
                             "of a tokenizer.json")
        texts = [t for t in texts if t.strip()]
        if not texts:
            raise ValueError(f"cannot train a {kind} tokenizer on an empty corpus: the training text has no words")
        alphabet = _alphabet_size(kind, texts)
        if kind in ("bpe", "wordpiece") and vocab_size < alphabet:
            raise ValueError(f"data.vocab_size={vocab_size} is smaller than the {alphabet} distinct symbols of the "
                             f"training text ({kind} needs one id per symbol first); raise data.vocab_size")
        tok, trainer = _untrained(kind, vocab_size)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> "SubwordTokenizer":
        """Load a ``tokenizer.json`` written by ``tokenizers``/``transformers``; raises ``ValueError`` naming it."""
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # the library raises a bare Exception for malformed files
            raise ValueError(f"{path} is not a tokenizer.json the tokenizers library can read: {e}") from None

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        """``text`` -> ``(n,)`` int64 ids (a ``word``/``wordpiece`` tokenizer maps unseen words to ``[UNK]``)."""
        return np.asarray(self.hf.encode(text).ids, dtype=np.int64)

    def encode_lines(self, text: str) -> np.ndarray:
        """Encode a large text line by line (in parallel inside the library), keeping the newlines."""
        lines = text.splitlines(keepends=True)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in self.hf.encode_batch(lines)] or
                              [np.zeros(0, dtype=np.int64)])

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_dict(self) -> dict:
        """The standard ``tokenizer.json`` content."""
        return json.loads(self.hf.to_str())


def _untrained(kind: str, vocab_size: int) -> tuple[HFTokenizer, object]:
    """A blank tokenizer of ``kind`` and its trainer."""
    if vocab_size < 2:
        raise ValueError(f"data.vocab_size must be at least 2, got {vocab_size}")
    if kind == "bpe":
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    if kind == "wordpiece":
        tok = HFTokenizer(models.WordPiece(unk_token=UNK))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        return tok, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[UNK], show_progress=False)
    if kind == "unigram":
        tok = HFTokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        return tok, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[UNK], unk_token=UNK,
                                            show_progress=False)
    tok = HFTokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="\0", cleanup=False)  # joins words with single spaces
    return tok, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=[UNK], show_progress=False)


def _alphabet_size(kind: str, texts: list[str]) -> int:
    if kind == "bpe":
        return len(pre_tokenizers.ByteLevel.alphabet())
    chars: set[str] = set()
    for t in texts:
        chars.update(t)
    return len(chars - set(" \t\n\r"))


def is_tokenizer_file(spec: dict) -> bool:
    """True for the content of a ``tokenizers`` ``tokenizer.json`` (vs attnlab's char/byte format)."""
    return isinstance(spec, dict) and "model" in spec and "kind" not in spec
