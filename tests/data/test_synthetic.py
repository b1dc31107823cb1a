"""Recall, copying and modular-arithmetic generators; the task registry; metrics; frequency baseline.

Labels are re-derived independently: recall answers by a dict lookup over the context, copy targets by
filtering the noise out of the context, modular answers by Python's ``%``.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.data import IGNORE_INDEX, DATASETS, get_dataset, list_datasets, dataset_options
from attnlab.data.synthetic import make_modular_addition, make_mqar, make_selective_copy
from attnlab.objectives.baselines import majority_class_accuracy, position_frequency_predictions, run_baselines
from attnlab.objectives.metrics import METRICS, accuracy, bits_per_token, mse, score, squared_error_by_position


def _tensors(task):
    out = []
    for split in (task.train, task.test):
        out += [split.inputs, split.targets] + [t for t in (split.loss_mask, split.key_padding_mask) if t is not None]
    return out


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(_tensors(a), _tensors(b)))


@pytest.mark.parametrize("build", [
    lambda s: make_mqar(num_train=200, num_test=50, seed=s),
    lambda s: make_selective_copy(num_train=200, num_test=50, seed=s),
    lambda s: make_modular_addition(modulus=23, seed=s),
])
def test_seeded_determinism(build):
    assert _same(build(3), build(3))
    assert not _same(build(3), build(4))


def test_mqar_answers_match_a_dict_lookup_over_the_context():
    v, t, p, q = 64, 64, 8, 6
    task = make_mqar(vocab_size=v, seq_len=t, num_kv_pairs=p, num_queries=q, num_train=300, num_test=30, seed=1)
    split = task.train
    assert split.inputs.shape == split.targets.shape == split.loss_mask.shape == (300, t)
    for x, y, m in zip(split.inputs.tolist(), split.targets.tolist(), split.loss_mask.tolist()):
        keys, values = x[0:2 * p:2], x[1:2 * p:2]
        assert len(set(keys)) == p and len(set(values)) == p
        assert all(1 <= k < v // 2 for k in keys) and all(v // 2 <= val < v for val in values)
        lookup = dict(zip(keys, values))
        scored = [i for i in range(t) if m[i]]
        assert len(scored) == q
        assert all(i >= 2 * p and (i - 2 * p) % 2 == 0 for i in scored)
        assert [y[i] for i in scored] == [lookup[x[i]] for i in scored]
        assert len({x[i] for i in scored}) == q  # distinct keys queried
        assert all(y[i] == IGNORE_INDEX for i in range(t) if not m[i])


def test_mqar_power_law_puts_queries_early_and_filler_is_optional():
    kw = dict(seq_len=128, num_kv_pairs=4, num_queries=4, num_train=500, num_test=10, seed=0)
    early = make_mqar(power_a=0.01, **kw).train
    uniform = make_mqar(power_a=1.0, **kw).train
    mean_pos = lambda s: s.loss_mask.nonzero()[:, 1].float().mean().item()  # noqa: E731
    assert mean_pos(early) < mean_pos(uniform) - 15  # measured: uniform 67, power law 35
    quiet = make_mqar(random_non_queries=False, **kw).train
    region = quiet.inputs[:, 8:]
    assert torch.equal(region != 0, quiet.loss_mask[:, 8:])  # only queries are non-zero after the context


@pytest.mark.parametrize("kwargs, match", [
    (dict(vocab_size=16, num_kv_pairs=8), "vocab_size=16"),
    (dict(seq_len=20, num_kv_pairs=8), "seq_len=20"),
    (dict(num_queries=9, num_kv_pairs=8), "num_queries=9"),
    (dict(power_a=0.0), "power_a"),
    (dict(num_train=0), "num_train"),
])
def test_mqar_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_mqar(**kwargs)


def test_selective_copy_targets_are_the_context_without_noise():
    task = make_selective_copy(context_len=40, num_tokens=6, num_symbols=5, num_train=300, num_test=20, seed=2)
    split = task.train
    assert task.vocab_size == 7 and task.seq_len == 46 and split.inputs.shape == (300, 46)
    for x, y, m, pos in zip(split.inputs.tolist(), split.targets.tolist(), split.loss_mask.tolist(),
                            split.extras["positions"].tolist()):
        data = [tok for tok in x[:40] if tok != 0]
        assert len(data) == 6 and all(2 <= tok <= 6 for tok in data)
        assert x[40:] == [1] * 6
        assert y[40:] == data and all(tok == IGNORE_INDEX for tok in y[:40])
        assert m == [False] * 40 + [True] * 6
        assert [x[i] for i in pos] == data
    with pytest.raises(ValueError, match="num_tokens=9"):
        make_selective_copy(context_len=8, num_tokens=9)


def test_modular_addition_covers_every_pair_once_with_python_answers():
    p = 31
    task = make_modular_addition(modulus=p, train_fraction=0.4, seed=5)
    assert len(task.train) == round(0.4 * p * p) and len(task.train) + len(task.test) == p * p
    pairs = set()
    for split in (task.train, task.test):
        for (a, b, eq), y, m in zip(split.inputs.tolist(), split.targets.tolist(), split.loss_mask.tolist()):
            assert eq == p and y[2] == (a + b) % p and y[:2] == [IGNORE_INDEX] * 2 and m == [False, False, True]
            pairs.add((a, b))
    assert len(pairs) == p * p
    assert task.vocab_size == p + 1 and task.seq_len == 3


@pytest.mark.parametrize("op, fn", [("sub", lambda a, b: a - b), ("mul", lambda a, b: a * b)])
def test_modular_other_operations(op, fn):
    task = make_modular_addition(modulus=13, operation=op, seed=0)
    a, b = task.test.inputs[:, 0].tolist(), task.test.inputs[:, 1].tolist()
    assert task.test.targets[:, 2].tolist() == [fn(x, y) % 13 for x, y in zip(a, b)]


def test_modular_addition_rejects_bad_options():
    with pytest.raises(ValueError, match="train_fraction"):
        make_modular_addition(train_fraction=1.0)
    with pytest.raises(ValueError, match="'div'.*valid"):
        make_modular_addition(operation="div")


def test_registry_lists_the_suite_and_names_valid_choices():
    names = list_datasets()
    assert names == sorted(["mqar", "selective_copy", "icl_regression", "modular_addition", "listops", "sentiment",
                            "fashion_mnist", "reversal", "addition", "sentiment_t2t", "fashion_images", "digits",
                            "image_folder", "keywords", "audio_folder", "file_types", "keyword_bytes"])
    assert all(spec.metric in METRICS for spec in DATASETS.values() if spec.kind != "seq2seq")
    assert all(spec.metric == "exact_match" for spec in DATASETS.values() if spec.kind == "seq2seq")  # attnlab eval
    with pytest.raises(ValueError, match=r"unknown dataset 'mqr'.*Did you mean \['mqar'\].*selective_copy"):
        get_dataset("mqr")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['seqlen'\].*seq_len"):
        get_dataset("mqar", seqlen=32)
    assert dataset_options("modular_addition") == {"modulus": 97, "train_fraction": 0.3, "operation": "add", "seed": 0}
    task = get_dataset("mqar", seq_len=32, num_kv_pairs=4, num_train=10, num_test=5, seed=9)
    assert task.options["seq_len"] == 32 and task.train.inputs.shape == (10, 32)
    assert _same(task, get_dataset("mqar", **task.options))


def test_accuracy_mse_and_bits_on_known_values():
    targets = torch.tensor([[1, 2, IGNORE_INDEX], [0, 3, 3]])
    logits = torch.zeros(2, 3, 4)
    for b, t, c in [(0, 0, 1), (0, 1, 0), (0, 2, 2), (1, 0, 0), (1, 1, 3), (1, 2, 1)]:
        logits[b, t, c] = 5.0
    assert accuracy(logits, targets) == pytest.approx(3 / 5)  # IGNORE_INDEX position skipped
    mask = torch.tensor([[True, False, False], [False, True, True]])
    assert accuracy(logits, targets, mask) == pytest.approx(2 / 3)
    assert bits_per_token(torch.zeros(2, 3, 8), targets) == pytest.approx(3.0)  # uniform over 8 = 3 bits
    pred, tgt = torch.tensor([[1.0, 5.0], [2.0, 0.0]]), torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert mse(pred, tgt) == pytest.approx((1 + 16 + 0 + 9) / 4)
    assert mse(pred[..., None], tgt, torch.tensor([[True, False], [True, False]])) == pytest.approx(0.5)
    assert squared_error_by_position(pred, tgt, torch.ones(2, 2, dtype=torch.bool)).tolist() == [0.5, 12.5]
    with pytest.raises(ValueError, match="do not match"):
        accuracy(torch.zeros(2, 4), targets)


def test_score_is_one_for_perfect_outputs_and_chance_for_the_frequency_baseline():
    task = make_selective_copy(context_len=32, num_tokens=4, num_symbols=8, num_train=2000, num_test=1000, seed=0)
    perfect = torch.nn.functional.one_hot(task.test.targets.clamp(min=0), task.vocab_size).float()
    assert score(task, perfect) == 1.0
    freq = position_frequency_predictions(task.train, task.test)
    assert freq.shape == task.test.targets.shape
    assert abs(accuracy(freq, task.test.targets, task.test.loss_mask) - 1 / 8) < 0.03
    mod = make_modular_addition(modulus=23, seed=0)
    assert run_baselines(mod)["position_frequency"]["test_accuracy"] < 0.1
    assert majority_class_accuracy(torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0, 2])) == 0.5


def test_batch_uses_lm_step_keys_and_ignore_index_is_skipped_by_cross_entropy():
    task = make_mqar(seq_len=32, num_kv_pairs=4, num_train=8, num_test=4, seed=0)
    batch = task.train.batch(torch.arange(4))
    assert set(batch) == {"idx", "targets", "loss_mask"} and batch["idx"].shape == (4, 32)
    logits = torch.randn(4, 32, task.vocab_size)
    full = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())
    m = batch["loss_mask"]
    masked = torch.nn.functional.cross_entropy(logits[m], batch["targets"][m])
    torch.testing.assert_close(full, masked)
    assert math.isclose(full.item() / math.log(2), bits_per_token(logits, batch["targets"], m), rel_tol=1e-5)


@pytest.mark.parametrize("population, k", [(9, 3), (5, 3)])  # rejection path (k*k <= pop), argpartition path
def test_sample_without_replacement_is_uniform_over_ordered_tuples(population, k):
    import collections

    import numpy as np

    from attnlab.data.base import sample_without_replacement

    draws = sample_without_replacement(np.random.default_rng(0), 60_000, population, k, chunk_elements=1000)
    assert draws.shape == (60_000, k) and all(len(set(r)) == k for r in draws.tolist())
    counts = collections.Counter(map(tuple, draws.tolist()))
    cells = math.perm(population, k)
    assert len(counts) == cells
    expected = 60_000 / cells
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < cells + 5 * math.sqrt(2 * cells)  # chi-square with cells-1 dof, 5 sigma


def test_split_subset_keeps_rows_aligned_and_rejects_mismatched_rows():
    from attnlab.data import SuiteSplit

    split = make_selective_copy(context_len=16, num_tokens=3, num_train=20, num_test=5, seed=0).train
    sub = split.subset(torch.tensor([4, 2]))
    assert len(sub) == 2 and torch.equal(sub.inputs[1], split.inputs[2])
    assert torch.equal(sub.extras["positions"][0], split.extras["positions"][4])
    assert torch.equal(sub.to("cpu").targets, sub.targets)
    with pytest.raises(ValueError, match="targets has 3 rows but inputs has 2"):
        SuiteSplit(torch.zeros(2, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long))
