"""Image classification datasets as images ``(N, C, H, W)`` for the vision family (ViT and its relatives).

- ``fashion_images``: Fashion-MNIST (Xiao et al. 2017), 28x28 grey, 60k/10k, from the Debian package.
- ``digits``: the UCI handwritten digits bundled with scikit-learn (Alpaydin & Kaynak 1998), 1,797 images of
  8x8 with 17 grey levels; a seeded split.
- ``image_folder``: a user's folder with one sub-folder per class (PNG, JPEG, BMP, GIF, WebP read by Pillow),
  resized to ``image_size``, a seeded train/test split per class.

Pixels are scaled to [0, 1] and normalised per channel with the training split's mean and standard deviation
(``dataset.image_norm``). Training-time augmentation (random crop after zero padding, horizontal flip, random
erasing) is three dataset options the trainer's feed applies to each batch: ``crop_padding``, ``flip`` and
``erase`` (the probability that an image gets a rectangle of noise).
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import torch

from ..base import SuiteDataset, SuiteSplit, class_files, long_tensor, split_rngs
from ..sources import source_path
from .images import CLASSES as FASHION_CLASSES
from .images import _subset, load_fashion_mnist

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _check_augment(crop_padding: int, flip: bool, erase: float = 0.0) -> dict:
    if not isinstance(crop_padding, int) or isinstance(crop_padding, bool) or crop_padding < 0:
        raise ValueError(f"crop_padding must be an int >= 0 (pixels of zero padding before a random crop), "
                         f"got {crop_padding!r}")
    if not isinstance(flip, bool):
        raise ValueError(f"flip must be true or false, got {flip!r}")
    if isinstance(erase, bool) or not isinstance(erase, (int, float)) or not 0.0 <= erase <= 1.0:
        raise ValueError(f"erase must be a probability in [0, 1] (the share of training images that get a "
                         f"rectangle of noise; 0.25 is usual), got {erase!r}")
    return dict(crop_padding=crop_padding, flip=flip, erase=float(erase))


def _dataset(name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
             classes: tuple[str, ...], options: dict) -> SuiteDataset:
    """``(images (N, C, H, W) float in [0, 1], labels (N,))`` pairs -> a normalised image :class:`SuiteDataset`."""
    mean = train[0].mean(axis=(0, 2, 3))  # (C,) statistics of the training split only
    std = train[0].std(axis=(0, 2, 3)) + 1e-6

    def split(images: np.ndarray, labels: np.ndarray) -> SuiteSplit:
        x = (images - mean[None, :, None, None]) / std[None, :, None, None]
        return SuiteSplit(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), long_tensor(labels))

    shape = tuple(int(s) for s in train[0].shape[1:])
    return SuiteDataset(name=name, kind="classify", train=split(*train), test=split(*test), seq_len=1,
                        metric="accuracy", num_classes=len(classes), label_names=classes, options=options,
                        image_shape=shape, image_norm=(tuple(map(float, mean)), tuple(map(float, std))))


def make_fashion_images(num_train: int | None = None, num_test: int | None = None, crop_padding: int = 0,
                        flip: bool = False, seed: int = 0, root: str | Path | None = None,
                        erase: float = 0.0) -> SuiteDataset:
    """Fashion-MNIST as ``(N, 1, 28, 28)`` images, 10 classes; ``num_train`` / ``num_test`` pick seeded subsets.

    Raises:
        FileNotFoundError: the IDX files are missing (message names the apt command).
        ValueError: bad subset sizes or augmentation options.
    """
    augment = _check_augment(crop_padding, flip, erase)
    for name, v in (("num_train", num_train), ("num_test", num_test)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive int or None, got {v!r}")
    pairs = {}
    for split, rng, n in zip(("train", "test"), split_rngs(seed), (num_train, num_test)):
        images, labels = load_fashion_mnist(split, root)
        idx = _subset(rng, len(labels), n)
        pairs[split] = (images[idx, None].astype(np.float32) / 255.0, labels[idx])
    options = dict(num_train=num_train, num_test=num_test, seed=seed, root=None if root is None else str(root),
                   **augment)
    return _dataset("fashion_images", pairs["train"], pairs["test"], FASHION_CLASSES, options)


def make_digits(test_fraction: float = 0.2, crop_padding: int = 0, flip: bool = False, seed: int = 0,
                path: str | Path | None = None, erase: float = 0.0) -> SuiteDataset:
    """The 8x8 UCI digits bundled with scikit-learn as ``(N, 1, 8, 8)`` images, 10 classes, seeded split.

    Raises:
        FileNotFoundError: scikit-learn (its ``digits.csv.gz``) is missing; the message names the pip command.
        ValueError: ``test_fraction`` outside (0, 1), bad augmentation options, a malformed file.
    """
    augment = _check_augment(crop_padding, flip, erase)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    path = source_path("digits") if path is None else Path(path)
    with gzip.open(path, "rt") as f:
        rows = np.asarray([[float(v) for v in row] for row in csv.reader(f) if row], dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != 65:
        raise ValueError(f"{path}: expected rows of 64 pixel values and a label, got shape {rows.shape}")
    images, labels = rows[:, :64].reshape(-1, 1, 8, 8) / 16.0, rows[:, 64].astype(np.int64)
    (rng,) = split_rngs(seed, 1)
    perm = rng.permutation(len(labels))
    n_test = max(1, int(round(test_fraction * len(labels))))
    test, train = perm[:n_test], perm[n_test:]
    options = dict(test_fraction=test_fraction, seed=seed, path=None if path is None else str(path), **augment)
    return _dataset("digits", (images[train], labels[train]), (images[test], labels[test]),
                    tuple(str(d) for d in range(10)), options)


def make_image_folder(path: str = "", image_size: int = 32, channels: int = 3, test_fraction: float = 0.2,
                      crop_padding: int = 0, flip: bool = False, seed: int = 0, erase: float = 0.0) -> SuiteDataset:
    """Images of ``path/<class>/*.{png,jpg,...}``, resized to ``image_size`` square, ``channels`` 1 (grey) or 3
    (RGB); per class a seeded ``test_fraction`` goes to the test split (at least one image stays in train).

    Raises:
        ValueError: no path, a folder that does not exist, fewer than two class folders, a class folder without
            images, an image Pillow cannot read (names it), bad sizes or options.
    """
    augment = _check_augment(crop_padding, flip, erase)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    files = class_files(path, IMAGE_SUFFIXES, "image_folder", "images")
    (rng,) = split_rngs(seed, 1)
    parts = {"train": ([], []), "test": ([], [])}
    for label, (name, paths) in enumerate(files.items()):
        order = rng.permutation(len(paths))
        n_test = min(len(paths) - 1, int(round(test_fraction * len(paths))))
        for rank, i in enumerate(order):
            images, labels = parts["test" if rank < n_test else "train"]
            images.append(_read_image(paths[i], image_size, channels))
            labels.append(label)
    if not parts["test"][0]:
        raise ValueError(f"{path}: every class has a single image, so the test split would be empty; add images")
    arrays = {k: (np.stack(v[0]), np.asarray(v[1], dtype=np.int64)) for k, v in parts.items()}
    options = dict(path=str(path), image_size=image_size, channels=channels, test_fraction=test_fraction, seed=seed,
                   **augment)
    return _dataset("image_folder", arrays["train"], arrays["test"], tuple(files), options)


def _read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image file -> ``(channels, size, size)`` float32 in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {str(path)!r} ({e}); remove it or convert it to PNG") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
