"""The irregular-series classifier: continuous time encoding = the sinusoidal table at integer times, unobserved and
padded values cannot change the output, a kernel without padding masks is refused, and it learns the synthetic
irregular task."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention.capabilities import CapabilityError
from attnlab.data.series.irregular import make_irregular
from attnlab.layers.positional import SinusoidalPositionalEmbedding
from attnlab.models import create_model
from attnlab.models.series import continuous_time_encoding


def test_time_encoding_at_integer_times_is_the_position_table():
    table = SinusoidalPositionalEmbedding(50, 32)(torch.arange(50))
    torch.testing.assert_close(continuous_time_encoding(torch.arange(50).float(), 32), table, atol=1e-6, rtol=0)


def test_unobserved_and_padded_values_change_nothing():
    data = make_irregular(8, seed=3)
    m = create_model("irregular-tiny").eval()
    b = data.batch(slice(None))
    out = m(b["times"], b["values"], b["observed"], b["padding"])
    noise = torch.randn_like(b["values"]) * 100
    hidden = ~(b["observed"] & b["padding"][..., None])
    values = torch.where(hidden, noise, b["values"])  # garbage wherever nothing was measured
    times = torch.where(b["padding"], b["times"], torch.rand_like(b["times"]) * 1e3)  # and at padded slots' times
    torch.testing.assert_close(m(times, values, b["observed"], b["padding"]), out, atol=0, rtol=0)
    assert b["padding"].sum(1).min() >= 20 and not b["padding"].all()  # variable lengths really are padded


def test_kernel_without_padding_masks_is_refused():
    with pytest.raises(CapabilityError, match="key_padding_mask"):
        create_model("irregular-tiny", attention="autocorrelation")


def test_learns_the_synthetic_irregular_task():
    train, test = make_irregular(1000, seed=0), make_irregular(300, seed=1)
    assert (test.labels.bincount() > 80).all()  # balanced enough that chance is ~1/3
    m = create_model("irregular-tiny")
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        b = train.batch(torch.randint(len(train), (32,), generator=g))
        loss = torch.nn.functional.cross_entropy(m(b["times"], b["values"], b["observed"], b["padding"]), b["targets"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    b = test.batch(slice(None))
    with torch.no_grad():
        acc = (m(b["times"], b["values"], b["observed"], b["padding"]).argmax(-1) == b["targets"]).float().mean()
    assert float(acc) > 0.8  # chance is 1/3
