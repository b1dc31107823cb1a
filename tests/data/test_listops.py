"""ListOps generator: every label re-evaluated by an independent parser/evaluator written here."""

from __future__ import annotations

import statistics
from dataclasses import replace

import pytest
import torch

from attnlab.data.synthetic.listops import (
    CLS, PAD, VOCAB, VOCAB_SIZE, apply_operator, make_listops, sample_expression, to_string, tokenize,
)
from attnlab.objectives.baselines import bag_of_tokens_logistic, majority_class_accuracy


def _evaluate(text: str) -> int:
    """Independent recursive-descent evaluator of LRA ListOps text (statistics.median_low would be wrong
    for even counts: LRA takes int(np.median), the floor of the mean of the middle pair)."""
    tokens = text.split()

    def expr(i: int) -> tuple[int, int]:
        tok = tokens[i]
        if tok.isdigit():
            return int(tok), i + 1
        args, i = [], i + 1
        while tokens[i] != "]":
            v, i = expr(i)
            args.append(v)
        fn = {"[MAX": max, "[MIN": min, "[SM": lambda a: sum(a) % 10,
              "[MED": lambda a: int(statistics.median(a))}[tok]
        return fn(args), i + 1

    value, end = expr(0)
    assert end == len(tokens), f"trailing tokens in {text!r}"
    return value


def _depth(text: str) -> int:
    depth = best = 0
    for tok in text.split():
        depth += tok.startswith("[")
        depth -= tok == "]"
        best = max(best, depth)
    return best


def test_labels_match_an_independent_evaluator():
    task = make_listops(max_depth=4, max_args=5, max_length=96, min_length=8, num_train=600, num_test=100, seed=3)
    for split in (task.train, task.test):
        for ids, label, depth, length in zip(split.inputs, split.targets.tolist(), split.extras["depth"].tolist(),
                                             split.extras["length"].tolist()):
            text = to_string(ids)
            assert _evaluate(text) == label
            assert _depth(text) == depth <= 4
            assert 8 <= length == len(text.split()) <= 96
    assert set(task.train.targets.tolist()) == set(range(10))


def test_known_expressions_and_operator_semantics():
    assert _evaluate("[MAX 2 9 [MIN 4 7 ] 0 ]") == 9
    assert tokenize("[MAX 2 9 [MIN 4 7 ] 0 ]") == [13, 4, 11, 12, 6, 9, 16, 2, 16]
    assert apply_operator("[MED", [1, 2, 3, 4]) == 2 and apply_operator("[MED", [4, 9]) == 6
    assert apply_operator("[MED", [7, 1, 3]) == 3 and apply_operator("[SM", [9, 8, 5]) == 2
    assert apply_operator("[MIN", [4, 2, 8]) == 2
    with pytest.raises(ValueError, match="unknown ListOps token 'FOO'"):
        tokenize("[MAX 1 FOO ]")


def test_padding_mask_cls_and_roundtrip():
    task = make_listops(max_length=64, add_cls=True, num_train=50, num_test=10, seed=0)
    split = task.train
    assert task.vocab_size == VOCAB_SIZE == 17 and task.num_classes == 10 and task.seq_len == 65
    assert split.inputs.shape == split.key_padding_mask.shape == (50, 65)
    assert (split.inputs[:, 0] == CLS).all()
    lengths = split.extras["length"] + 1
    assert torch.equal(split.key_padding_mask.sum(1), lengths)
    assert torch.equal(split.inputs == PAD, ~split.key_padding_mask)
    for ids, n in zip(split.inputs, lengths.tolist()):
        assert tokenize(to_string(ids)) == ids[1:n].tolist()
    assert max(VOCAB.values()) == 16


def test_seeded_determinism():
    a = make_listops(num_train=100, num_test=20, seed=11)
    b = make_listops(num_train=100, num_test=20, seed=11)
    c = make_listops(num_train=100, num_test=20, seed=12)
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.test.targets, b.test.targets)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    assert not torch.equal(a.train.inputs[:20], a.test.inputs)


def test_impossible_or_bad_options_raise():
    import numpy as np

    with pytest.raises(ValueError, match="no ListOps expression"):
        sample_expression(np.random.default_rng(0), max_depth=1, max_args=3, max_length=40, min_length=30,
                          max_tries=50)
    with pytest.raises(ValueError, match="max_args must be >= 2"):
        make_listops(max_args=1)
    with pytest.raises(ValueError, match="min_length"):
        make_listops(min_length=50, max_length=40)


def test_bag_of_tokens_beats_majority_class():
    task = make_listops(num_train=1500, num_test=500, seed=0)
    majority = majority_class_accuracy(task.train.targets, task.test.targets)
    bag = bag_of_tokens_logistic(task, num_buckets=1 << 10, max_iter=20)
    assert majority < 0.15  # labels are spread over 0-9
    assert bag["test_accuracy"] > majority + 0.05
    with pytest.raises(ValueError, match="classification dataset"):
        bag_of_tokens_logistic(replace(task, kind="lm"))
