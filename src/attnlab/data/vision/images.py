"""Fashion-MNIST as a pixel sequence (Xiao et al. 2017), from the Debian package ``dataset-fashion-mnist``.

Sequential image classification in the style of sequential MNIST and LRA's "Image" benchmark: the
28x28 grey image is read row-major as a sequence of 784 pixel tokens. Files (IDX format, gzip) live in
``/usr/share/datasets/fashion-mnist/``: ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``. Install with
``apt-get update && apt-get install -y dataset-fashion-mnist``.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from ..sources import source_path
from ..base import SuiteDataset, SuiteSplit, long_tensor, split_rngs

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_COMMAND = "apt-get update && apt-get install -y dataset-fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format; gzip when the name ends in ``.gz``).

    Header: two zero bytes, a dtype code, the number of dimensions, then each size as big-endian int32.

    Raises:
        ValueError: not an IDX file, or its size does not match its header.
    """
    path = Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (header {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``images (N, 28, 28) uint8`` and ``labels (N,) int64`` of ``split`` ("train" 60k, "test" 10k),
    read-only (cached per process).

    Raises:
        FileNotFoundError: a file is missing under ``root``; the message names the apt command.
        ValueError: unknown ``split``, or images and labels of different lengths.
    """
    if split not in FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; valid: {list(FILES)}")
    root = source_path("fashion_mnist") if root is None else Path(root)
    paths = [root / name for name in FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST files not found: {missing}. The Debian package provides them in "
                                f"{FASHION_MNIST_DIR}: run `{APT_COMMAND}` (or pass root= a folder with these files)")
    images, labels = _read_pair(*(str(p.resolve()) for p in paths), *(p.stat().st_mtime_ns for p in paths))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{paths[0]} has {images.shape[0]} images but {paths[1]} has {labels.shape[0]} labels")
    return images, labels


@functools.lru_cache(maxsize=4)
def _read_pair(images_path: str, labels_path: str, *mtimes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read once per process (a grid builds the dataset once per seed); arrays are read-only."""
    images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def pixels_to_tokens(images: np.ndarray, levels: int = 256, size: int = 28) -> np.ndarray:
    """``(N, 28, 28) uint8`` -> ``(N, size * size)`` int64 tokens in ``[0, levels)``, row-major.

    ``size`` 14 or 7 average-pools 2x2 or 4x4 blocks first (shorter sequences for CPU budgets);
    ``levels`` quantises uniformly: token = ``pixel * levels // 256`` (256 keeps raw intensities).
    """
    n, h, w = images.shape
    f = h // size
    pooled = images.reshape(n, size, f, size, f).mean(axis=(2, 4))  # (N, size, size): block means
    pix = np.clip(np.rint(pooled), 0, 255).astype(np.int64)
    return (pix * levels // 256).reshape(n, size * size)  # (N, size * size) row-major


def _subset(rng: np.random.Generator, n_total: int, n: int | None) -> np.ndarray:
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=n, replace=False))


def make_fashion_mnist(levels: int = 256, size: int = 28, num_train: int | None = None, num_test: int | None = None,
                       seed: int = 0, root: str | Path | None = None) -> SuiteDataset:
    """Fashion-MNIST pixel-sequence classification (10 classes, ``CLASSES``), metric accuracy.

    Vocabulary: the ``levels`` pixel tokens ``0 .. levels - 1`` (``vocab_size = levels``; no padding:
    every sequence has ``size * size`` tokens; 784 by default). ``grid = (size, size)`` for 2-D
    attention. ``num_train`` / ``num_test`` pick a seeded random subset (None = all 60,000 / 10,000).

    Raises:
        FileNotFoundError: the IDX files are missing (message names the apt command).
        ValueError: ``levels`` outside [2, 256], ``size`` not 28, 14 or 7, bad subset sizes.
    """
    if not isinstance(levels, int) or not 2 <= levels <= 256:
        raise ValueError(f"levels must be an int in [2, 256], got {levels!r}")
    if size not in (28, 14, 7):
        raise ValueError(f"size must be 28, 14 or 7 (pooling 1x1, 2x2 or 4x4), got {size!r}")
    for name, v in (("num_train", num_train), ("num_test", num_test)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive int or None, got {v!r}")
    r_train, r_test = split_rngs(seed)
    splits = {}
    for split, rng, n in (("train", r_train, num_train), ("test", r_test, num_test)):
        images, labels = load_fashion_mnist(split, root)
        idx = _subset(rng, len(labels), n)
        splits[split] = SuiteSplit(long_tensor(pixels_to_tokens(images[idx], levels, size)), long_tensor(labels[idx]))
    options = dict(levels=levels, size=size, num_train=num_train, num_test=num_test, seed=seed,
                   root=None if root is None else str(root))
    return SuiteDataset(name="fashion_mnist", kind="classify", train=splits["train"], test=splits["test"],
                       seq_len=size * size, metric="accuracy", vocab_size=levels, num_classes=10, grid=(size, size),
                       label_names=CLASSES, options=options)
