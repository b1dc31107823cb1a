"""Public inference functions check their arguments: a ValueError or TypeError naming what was wrong and the fix,
never a torch error from deep inside."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import attnlab
from attnlab.infer import generate, sample_next
from attnlab.infer.embed import check_texts
from attnlab.models import create_model


@pytest.mark.parametrize("texts, message", [
    (None, "texts must be a list of strings, got NoneType"),
    (42, "texts must be a list of strings, got int"),
    ({"a", "b"}, "texts must be a list of strings, got set"),
    (b"bytes", "texts must be a list of strings, got one string: wrap it in a list"),
    (["a", None], "texts must be a list of strings, but texts[1] is NoneType (None); convert every item with str() "
                  "or drop it"),
    (["a", "b", 3.5], "but texts[2] is float (3.5)"),
])
def test_embed_refuses_texts_that_are_not_strings(texts, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        attnlab.embed(texts, create_model("encoder-tiny", vocab_size=50), progress=False)


def test_texts_may_be_any_ordered_iterable_of_strings():
    assert check_texts(("a", "b")) == ["a", "b"]
    assert check_texts(t for t in "ab") == ["a", "b"]
    assert check_texts(np.array(["a", "b"])) == ["a", "b"]


@pytest.mark.parametrize("name", ["gpt-tiny", "encoder-tiny"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_non_integer_token_ids_name_the_dtype(name, dtype):
    model = create_model(name, vocab_size=50, dim=16, num_layers=1, num_heads=2).eval()
    with pytest.raises(TypeError, match=rf"token ids must be integers \(torch\.long\), got dtype {dtype}; convert "
                                        r"them with ids\.long\(\)"):
        model(torch.zeros(1, 4, dtype=dtype))
    with pytest.raises(TypeError, match="token ids must be a tensor of integers, got list"):
        model([[1, 2, 3]])
    assert model(torch.ones(1, 4, dtype=torch.int32)).shape[:2] == (1, 4)  # any integer dtype is fine


def test_generate_needs_a_causal_decoder():
    encoder = create_model("encoder-tiny", vocab_size=50, dim=16, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match=r"generate needs a causal decoder such as GPT .*Encoder is not one: for an "
                                         r"encoder use attnlab\.embed or model\(ids\), for an encoder-decoder "
                                         r"attnlab\.infer\.seq2seq\.generate_seq2seq"):
        generate(encoder, torch.zeros(1, 3, dtype=torch.long), 2)
    seq2seq = create_model("seq2seq-tiny", vocab_size=50)
    with pytest.raises(ValueError, match="EncoderDecoder is not one"):
        generate(seq2seq, torch.zeros(1, 3, dtype=torch.long), 2)


@pytest.mark.parametrize("prompt, kwargs, error, message", [
    (torch.zeros(1, 3), {}, TypeError, "token ids must be integers (torch.long), got dtype torch.float32"),
    ([[1, 2]], {}, TypeError, "token ids must be a tensor of integers, got list"),
    (torch.zeros(0, 3, dtype=torch.long), {}, ValueError, "prompt has no rows (batch of 0)"),
    (torch.zeros(1, 3, dtype=torch.long), {"max_new_tokens": 2.0}, ValueError,
     "max_new_tokens must be an integer >= 0, got 2.0"),
    (torch.zeros(1, 3, dtype=torch.long), {"temperature": float("nan")}, ValueError,
     "temperature must be >= 0 and finite (0 = greedy), got nan"),
])
def test_generate_checks_its_arguments(prompt, kwargs, error, message):
    model = create_model("gpt-tiny", vocab_size=50, dim=16, num_layers=1, num_heads=2)
    kwargs = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        generate(model, prompt, kwargs.pop("max_new_tokens"), **kwargs)


@pytest.mark.parametrize("kw, message", [
    (dict(temperature=float("inf")), "temperature must be >= 0 and finite (0 = greedy), got inf"),
    (dict(temperature="hot"), "temperature must be a number >= 0 (0 = greedy), got str"),
    (dict(temperature=1.0, top_k=2.5), "top_k must be an integer >= 1 (or None), got 2.5"),
    (dict(temperature=1.0, top_p=float("nan")), "top_p must be in (0, 1], got nan"),
])
def test_sampling_refuses_non_finite_and_mistyped_values(kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sample_next(torch.randn(1, 5), **kw)
