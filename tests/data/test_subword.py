"""Tokenizers trained on the user's corpus (bpe, wordpiece, unigram, word) and reused from a tokenizer.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer

from attnlab.config import load_config
from attnlab.data.text import build_lm_data
from attnlab.data.text.subword import SUBWORD_KINDS, SubwordTokenizer
from attnlab.data.text.tokenizers import load_tokenizer, save_tokenizer

LINES = [f"patient {i} visited the clinic on day {i % 7} and was given drug {'ABC'[i % 3]}" for i in range(300)]


@pytest.mark.parametrize("kind", SUBWORD_KINDS)
def test_each_kind_trains_within_its_vocabulary_and_decodes(kind):
    tok = SubwordTokenizer.fit(kind, LINES, 300)
    assert tok.kind == kind and 10 < tok.vocab_size <= 300
    ids = tok.encode("patient 5 visited the clinic")
    assert ids.dtype == np.int64 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == "patient 5 visited the clinic"


def test_bpe_is_lossless_on_unseen_text():
    tok = SubwordTokenizer.fit("bpe", LINES, 400)
    text = "Zürich, 3 µg — unseen ✓\nsecond line"
    assert tok.decode(tok.encode(text)) == text


def test_word_level_suits_event_sequences():
    events = ["E11.9 I10 Z79.4", "I10 N18.3", "E11.9 N18.3 I10"] * 10
    tok = SubwordTokenizer.fit("word", events, 100)
    ids = tok.encode("E11.9 I10 X99")
    assert len(ids) == 3 and tok.decode(ids) == "E11.9 I10 [UNK]"
    assert len(set(tok.encode(" ".join(events[:3])).tolist())) == 4  # one id per distinct code


def test_saved_tokenizer_is_a_standard_tokenizer_json(tmp_path):
    tok = SubwordTokenizer.fit("wordpiece", LINES, 200)
    path = tmp_path / "tokenizer.json"
    save_tokenizer(tok, path)
    hf = HFTokenizer.from_file(str(path))  # what tokenizers / transformers read
    again = load_tokenizer(path)
    text = "patient 12 was given drug B"
    assert hf.encode(text).ids == tok.encode(text).tolist() == again.encode(text).tolist()
    assert isinstance(again, SubwordTokenizer) and again.vocab_size == tok.vocab_size


def test_tokenizer_never_sees_the_validation_text(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(LINES + ["the zyzzyva arrived"] * 3) + "\n", encoding="utf-8")
    data = build_lm_data(str(corpus), "word", seq_len=8, val_fraction=0.05, split="tail", vocab_size=500)
    unk = data.tokenizer.hf.token_to_id("[UNK]")
    assert data.tokenizer.hf.token_to_id("zyzzyva") is None  # only in the held-out tail
    assert unk in data.val.tolist() and unk not in data.train.tolist()


def test_existing_tokenizer_json_is_reused(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    first = build_lm_data(str(corpus), "bpe", seq_len=8, vocab_size=300)
    path = tmp_path / "tokenizer.json"
    save_tokenizer(first.tokenizer, path)
    again = build_lm_data(str(corpus), str(path), seq_len=8)
    assert again.tokenizer.vocab_size == first.tokenizer.vocab_size
    np.testing.assert_array_equal(again.train, first.train)
    np.testing.assert_array_equal(again.val, first.val)


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"data.vocab_size=50 is smaller than the 256 distinct symbols"):
        SubwordTokenizer.fit("bpe", LINES, 50)
    with pytest.raises(ValueError, match="empty corpus"):
        SubwordTokenizer.fit("word", ["", "   "], 50)
    with pytest.raises(ValueError, match=r"unknown tokenizer kind 'bpx'"):
        SubwordTokenizer.fit("bpx", LINES, 50)
    with pytest.raises(ValueError, match=r"unknown tokenizer 'bpx'; did you mean \['bpe'\]"):
        load_config(None, ["data.tokenizer=bpx"])
    with pytest.raises(ValueError, match="unknown tokenizer 'nope.json'"):
        build_lm_data("kjv", "nope.json", seq_len=8)
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"model": {"type": "Nonsense"}}), encoding="utf-8")
    with pytest.raises(ValueError, match=str(bad)):
        load_tokenizer(bad)
    assert load_config(None, ["data.tokenizer=unigram", "data.vocab_size=500"]).data.vocab_size == 500
