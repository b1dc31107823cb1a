"""Bytes datasets: file types found on disk (magic numbers checked, windows, padding) and keywords as WAV bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.data.audio.wav import read_wav_bytes
from attnlab.data.audio import make_keyword_bytes
from attnlab.data.bytes import as_bytes, make_file_types
from attnlab.data.bytes.files import find_files
from attnlab.data.sources import locate

needs_espeak = pytest.mark.skipif(locate("espeak") is None, reason="espeak-ng missing: apt-get install -y espeak-ng")


def _tree(root, per_type: int = 6):
    (root / "a" / "b").mkdir(parents=True)
    for i in range(per_type):
        (root / "a" / f"img{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(i, i + 200)))
        (root / "a" / "b" / f"mod{i}.py").write_text(f"import os\n\ndef f{i}(x):\n    return x + {i}\n" * 6)
        (root / f"data{i}.json").write_text('{"key": [' + ", ".join(str(j) for j in range(20 + i * 40)) + "]}")
    (root / "fake.png").write_bytes(b"not a png" * 20)  # wrong magic: skipped
    (root / "tiny.py").write_text("x = 1\n")  # below the minimum size: skipped


def test_file_types_found_read_and_padded(tmp_path):
    _tree(tmp_path)
    found = find_files((str(tmp_path),))
    assert len(found["png"]) == 6 and len(found["python"]) == 6 and not found["wav"]
    d = make_file_types(max_bytes=128, per_class=10, min_per_class=5, test_fraction=0.34, roots=[str(tmp_path)])
    assert d.label_names == ("png", "python", "json") and d.byte_length == 128
    assert d.options["found"]["png"] == 6 and len(d.train) + len(d.test) == 18
    x = torch.cat([d.train.inputs, d.test.inputs])
    assert x.shape[1] == 128 and x.min() >= -1 and x.max() <= 255
    pngs = torch.cat([d.train.inputs[d.train.targets == 0], d.test.inputs[d.test.targets == 0]])
    assert (pngs[:, :4] == torch.tensor([0x89, 0x50, 0x4E, 0x47])).all()
    short = (x == -1).any(1)  # the short JSON files end in padding, nothing after it
    assert short.any() and all(bool((row[row.eq(-1).nonzero()[0, 0]:] == -1).all()) for row in x[short])
    assert set(d.train.batch(torch.arange(2))) == {"bytes", "targets"}


def test_random_windows_skip_the_headers(tmp_path):
    _tree(tmp_path)
    kw = dict(max_bytes=16, per_class=10, min_per_class=5, roots=[str(tmp_path)])
    start, inside = make_file_types(**kw), make_file_types(**kw, window="random")
    assert not torch.equal(start.train.inputs, inside.train.inputs)
    assert torch.equal(inside.train.inputs, make_file_types(**kw, window="random").train.inputs)  # seeded


def test_file_types_errors_name_what_was_found(tmp_path):
    _tree(tmp_path)
    with pytest.raises(ValueError, match="fewer than two types with 50 files"):
        make_file_types(roots=[str(tmp_path)], min_per_class=50)
    with pytest.raises(ValueError, match="are not folders"):
        make_file_types(roots=[str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="window must be"):
        make_file_types(roots=[str(tmp_path)], window="middle")


def test_as_bytes_pads_with_minus_one():
    x = as_bytes([b"\x00\xff", b"abc"])
    assert x.tolist() == [[0, 255, -1], [97, 98, 99]]


@needs_espeak
def test_keyword_bytes_are_whole_wav_files(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))
    d = make_keyword_bytes(train_voices=3, val_voices=1, test_voices=1, seconds=0.5)
    assert d.train.inputs.shape == (30, d.byte_length) and len(d.val) == len(d.test) == 10
    raw = bytes(d.train.inputs[0].to(torch.uint8).tolist())
    wave, rate = read_wav_bytes(raw)
    assert rate == 8000 and len(wave) == 4000 and raw[20] == 7  # 8-bit mu-law (format tag 7)
    pcm = make_keyword_bytes(train_voices=3, val_voices=1, test_voices=1, seconds=0.5, encoding="pcm16")
    assert pcm.byte_length == 44 + 8000
    np.testing.assert_allclose(read_wav_bytes(bytes(pcm.train.inputs[0].to(torch.uint8).tolist()))[0], wave,
                               atol=0.03)  # the same clip in both encodings
