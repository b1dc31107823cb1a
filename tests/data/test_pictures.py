"""Image datasets for the vision family: digits, Fashion-MNIST images, a user's image folder, augmentation."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from attnlab.data.registry import get_dataset
from attnlab.data.vision.augment import augment_images
from attnlab.data.vision.pictures import make_image_folder


def test_digits_are_normalised_with_training_statistics_and_split_by_seed():
    d = get_dataset("digits")
    assert d.image_shape == (1, 8, 8) and d.kind == "classify" and d.num_classes == 10
    assert len(d.train) + len(d.test) == 1797 and len(d.test) == round(0.2 * 1797)
    x = d.train.inputs
    assert x.shape == (len(d.train), 1, 8, 8) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1.0) < 1e-3  # training split's own statistics
    mean, std = d.image_norm
    from attnlab.data.sources import source_path

    with gzip.open(source_path("digits"), "rt") as f:
        first = np.array([float(v) for v in f.readline().split(",")])
    raw = torch.from_numpy(first[:64].reshape(1, 8, 8) / 16.0).float()
    row = [i for i in range(len(d.train)) if torch.allclose(d.train.inputs[i] * std[0] + mean[0], raw, atol=1e-5)]
    row += [-1 - i for i in range(len(d.test)) if torch.allclose(d.test.inputs[i] * std[0] + mean[0], raw, atol=1e-5)]
    assert len(row) >= 1  # the file's first image is in one split, de-normalised exactly
    e = get_dataset("digits", seed=1)
    assert not torch.equal(e.test.targets, d.test.targets)
    assert d.train.batch(torch.arange(4))["pixels"].shape == (4, 1, 8, 8)


def test_fashion_images_subsets():
    d = get_dataset("fashion_images", num_train=200, num_test=50)
    assert d.train.inputs.shape == (200, 1, 28, 28) and d.test.inputs.shape == (50, 1, 28, 28)
    assert d.label_names[0] == "T-shirt/top"


def _folder(tmp_path, classes=("cat", "dog"), per_class=5, size=(12, 10)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (tmp_path / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((size[1], size[0], 3)) * 60 + 180 * c).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    return tmp_path


def test_image_folder_reads_classes_resizes_and_splits_per_class(tmp_path):
    root = _folder(tmp_path / "imgs")
    d = make_image_folder(str(root), image_size=8, channels=3, test_fraction=0.4)
    assert d.label_names == ("cat", "dog") and d.image_shape == (3, 8, 8)
    assert len(d.test) == 4 and len(d.train) == 6  # 2 of 5 per class
    assert sorted(d.test.targets.tolist()) == [0, 0, 1, 1]
    grey = make_image_folder(str(root), image_size=6, channels=1)
    assert grey.image_shape == (1, 6, 6)
    # class 1 is brighter: its normalised pixels are above class 0's
    assert d.train.inputs[d.train.targets == 1].mean() > d.train.inputs[d.train.targets == 0].mean()


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "does not exist or is not a folder"),
    (lambda p: (p / "only").mkdir(parents=True), "has 1 class sub-folder"),
    (lambda p: [(p / n).mkdir(parents=True) for n in ("a", "b")], r"class folder\(s\) \['a', 'b'\] .* hold no images"),
])
def test_bad_image_folders_are_one_line(tmp_path, setup, message):
    root = tmp_path / "x"
    setup(root)
    with pytest.raises(ValueError, match=message):
        make_image_folder(str(root))


def test_unreadable_image_is_named(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=2)
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image '.*broken.png'"):
        make_image_folder(str(root))


def test_augmentation_shifts_and_flips_exactly():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = augment_images(x, crop_padding=1, generator=g)
    g = torch.Generator().manual_seed(0)
    dy, dx = (torch.randint(0, 3, (2,), generator=g).tolist() for _ in range(2))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + 4, dx[i]:dx[i] + 4])
    flipped = augment_images(x, flip=True, generator=torch.Generator().manual_seed(3))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))
    with pytest.raises(ValueError, match="expected images"):
        augment_images(x[0])


def test_crops_pad_with_the_fill_value_per_channel():
    """Normalised images pad with a black pixel's value (-mean/std), not 0 = the mean grey."""
    x = torch.ones(3, 2, 4, 4)
    out = augment_images(x, crop_padding=4, generator=torch.Generator().manual_seed(1), fill=(-2.0, 5.0))
    inside = out == 1.0
    assert torch.equal(out[:, 0][~inside[:, 0]].unique(), torch.tensor([-2.0]))
    assert torch.equal(out[:, 1][~inside[:, 1]].unique(), torch.tensor([5.0]))
    assert (~inside).any()


def test_random_erasing_replaces_one_rectangle_of_the_drawn_size():
    """Zhong et al. 2017: each chosen image differs from its input in exactly one rectangle, of 2-40% of the
    image and aspect ratio within [0.3, 1/0.3] (up to rounding); the rest is untouched; same seed, same output."""
    x = torch.full((64, 2, 20, 24), 7.0)  # noise never equals 7 exactly, so the changed pixels are the rectangle
    out = augment_images(x, erase=1.0, generator=torch.Generator().manual_seed(5))
    again = augment_images(x, erase=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, again) and torch.equal(x, torch.full_like(x, 7.0))
    for img in out:
        changed = (img != 7.0).any(0)
        assert changed.any()
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert int(changed.sum()) == h * w and (img[:, changed] != 7.0).all()  # a full rectangle, all channels
        assert 0.02 * 480 - 2 * (h + w) <= h * w <= 0.4 * 480 + 2 * (h + w)
        assert 0.3 * w - 1 <= h <= w / 0.3 + 1
    some = augment_images(x, erase=0.25, generator=torch.Generator().manual_seed(0))
    erased = (some != 7.0).flatten(1).any(1).float().mean().item()
    assert 0.1 < erased < 0.45  # ~ a quarter of the 64 images
    assert torch.equal(augment_images(x, erase=0.0), x)


@pytest.mark.parametrize("erase", [-0.1, 1.5, True, "half"])
def test_bad_erase_probability_is_one_line(erase):
    with pytest.raises(ValueError, match="erase must be a probability in"):
        get_dataset("digits", erase=erase)
