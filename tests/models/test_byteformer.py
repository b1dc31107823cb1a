"""ByteFormer: byte convolution and masks, windowed attention against dense attention under the window masks, token
merging, batch-padding independence, learning a synthetic file-type task, clear errors."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention.capabilities import CapabilityError
from attnlab.attention.context import AttentionContext
from attnlab.models import create_model

from classifykit import held_out_accuracy
from attnlab.models.bytes.byteformer import TokenMerging, conv_tokens


def test_conv_token_count_and_mask_propagation():
    model = create_model("byteformer-tiny")
    assert [conv_tokens(n, 8) for n in (3, 8, 11, 12, 100)] == [1, 1, 1, 2, 24]
    data = torch.randint(0, 256, (2, 100))
    data[1, 37:] = -1                                      # 37 real bytes: tokens 0..7 lie within them
    x, mask = model.tokens(data)
    assert x.shape == (2, 24, 32)
    assert mask[0].all() and mask[1].tolist() == [t * 4 + 8 <= 37 for t in range(24)]
    short = torch.full((1, 100), -1)
    short[0, :5] = torch.randint(0, 256, (5,))             # shorter than one kernel: one token
    assert model.tokens(short)[1][0].tolist() == [True] + [False] * 23


def _dense_expected(block, x, mask, w, shift):
    """The block on the whole sequence with a keep mask: same window (after the roll), same side of the wrap."""
    B, T, _ = x.shape
    pos = (torch.arange(T) - shift) % ((T + (-T % w)))          # where each token sits after rolling left
    win = pos // w
    wrapped = torch.arange(T) < shift
    keep = (win[:, None] == win[None, :]) & (wrapped[:, None] == wrapped[None, :])
    bias = torch.zeros(B, 1, T, T).masked_fill(~(keep[None, None] & mask[:, None, None, :]), float("-inf"))
    return block(x, AttentionContext(causal=False, attn_bias=bias))


@pytest.mark.parametrize("T, shift", [(64, 0), (64, 8), (50, 8), (50, 0)])
def test_windowed_attention_equals_dense_attention_under_the_window_masks(T, shift):
    torch.manual_seed(0)
    model = create_model("byteformer-tiny").eval()
    block = model.blocks[0]
    x = torch.randn(2, T, 32)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, T - 9:] = False
    with torch.no_grad():
        ours = model._windowed(block, x, mask, shift)
        ref = _dense_expected(block, x, mask, 16, shift)
    torch.testing.assert_close(ours[mask], ref[mask], rtol=1e-5, atol=1e-5)


def test_one_window_covering_everything_is_full_attention():
    model = create_model("byteformer-tiny", window_size=64).eval()
    x, mask = torch.randn(2, 40, 32), torch.ones(2, 40, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(model._windowed(model.blocks[0], x, mask, 0),
                                   model.blocks[0](x, AttentionContext(causal=False)))


def test_token_merging_of_a_pair_and_an_odd_tail():
    merge = TokenMerging(4, 1e-6)
    x = torch.randn(1, 3, 4)
    y, mask = merge(x, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(y[0, 0], merge.norm(merge.reduce(torch.cat([x[0, 0], x[0, 1]]))))
    torch.testing.assert_close(y[0, 1], merge.norm(merge.reduce(torch.zeros(8))))  # masked token zeroed, odd pad
    assert mask.tolist() == [[True, False]]


def test_the_same_file_gets_the_same_logits_whatever_the_batch_padding():
    torch.manual_seed(1)
    model = create_model("byteformer-tiny").eval()
    file = torch.randint(0, 256, (333,))
    alone = file[None]
    batch = torch.full((3, 900), -1)
    batch[0, :333], batch[1], batch[2, :50] = file, torch.randint(0, 256, (900,)), torch.randint(0, 256, (50,))
    with torch.no_grad():
        torch.testing.assert_close(model.classify(batch)[0], model.classify(alone)[0], rtol=1e-4, atol=1e-5)


def _files(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four synthetic 'file types' of 200-400 bytes: ASCII text, zero-heavy binary, high bytes, a repeating record."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    data = torch.full((n, 400), -1)
    for i, c in enumerate(labels.tolist()):
        L = int(torch.randint(200, 401, (1,), generator=g))
        if c == 0:
            row = torch.randint(97, 123, (L,), generator=g)
        elif c == 1:
            row = torch.randint(0, 256, (L,), generator=g) * (torch.rand(L, generator=g) < 0.2)
        elif c == 2:
            row = torch.randint(128, 256, (L,), generator=g)
        else:
            row = torch.randint(0, 256, (8,), generator=g).repeat(L // 8 + 1)[:L]
        data[i, :L] = row
    return data, labels


def test_byteformer_learns_synthetic_file_types():
    torch.manual_seed(0)
    model = create_model("byteformer-tiny")
    assert held_out_accuracy(model, _files(256, 0), _files(128, 1), steps=100) > 0.9


def test_bad_inputs_and_configs_are_one_line():
    model = create_model("byteformer-tiny")
    for data, message in [(torch.full((1, 20), 300), "byte values must be 0..255"),
                          (torch.rand(1, 20), "expected integer bytes"),
                          (torch.full((1, 20), -1), "holds no bytes"),
                          (torch.randint(0, 256, (1, 4000)), "make 999 tokens but max_seq_len=512")]:
        with pytest.raises(ValueError, match=message):
            model.classify(data)
    with pytest.raises(ValueError, match="must be even"):
        create_model("byteformer-tiny", patch_size=7)
    with pytest.raises(ValueError, match=r"merge_after names layers \[9\]"):
        create_model("byteformer-tiny", merge_after=[9])
    with pytest.raises(CapabilityError, match="key_padding_mask"):
        create_model("byteformer-tiny", attention="window")
    assert create_model("byteformer-tiny", attention="linear", window_size=512).classify(
        torch.randint(0, 256, (2, 100))).shape == (2, 4)
