"""Autoformer's Auto-Correlation kernel against its definition: the FFT lag correlation equals the direct lag-by-lag
sum, training and inference aggregation agree for one sample, the roll direction, and the map equals the output."""

from __future__ import annotations

import pytest
import torch

from attnlab.attention.kernels.autocorrelation import AutoCorrelation, lag_correlation
from attnlab.attention.registry import build_attention


@pytest.mark.parametrize("T", [1, 2, 7, 24, 25])
def test_fft_correlation_equals_direct_lag_sum(T):
    q = torch.randn(2, 3, T, 4, dtype=torch.float64)
    k = torch.randn(2, 3, T, 4, dtype=torch.float64)
    direct = torch.stack([(q.roll(-tau, dims=2) * k).sum(2) for tau in range(T)], dim=2)  # Σ_t q[t+τ] k[t]
    torch.testing.assert_close(lag_correlation(q, k), direct, rtol=1e-10, atol=1e-10)


def test_top_k_is_factor_log_length_clamped():
    ac = AutoCorrelation(factor=3)
    assert [ac.top_k(T) for T in (1, 2, 96, 144)] == [1, 2, 13, 14]
    assert AutoCorrelation(factor=1).top_k(2) == 1  # int(ln 2) = 0 is clamped to 1


def test_one_sample_training_equals_inference():
    ac = AutoCorrelation(factor=2)
    q, k, v = (torch.randn(1, 2, 30, 4) for _ in range(3))
    torch.testing.assert_close(ac.train()(q, k, v), ac.eval()(q, k, v), rtol=0, atol=0)


def test_autocorrelation_with_one_delay_returns_v():
    ac = AutoCorrelation(factor=1e-3).eval()  # top_k = 1
    q = torch.randn(2, 2, 20, 4)
    v = torch.randn(2, 2, 20, 4)
    torch.testing.assert_close(ac(q, q, v), v)  # τ = 0 is the maximum of an autocorrelation; softmax of one = 1


def test_roll_direction():
    ac = AutoCorrelation(factor=1e-3).eval()
    T, t0, tau = 16, 9, 5
    base = torch.randn(1, 1, T, 2)
    q, k = base.roll(tau, dims=2), base  # q[t] = k[t - tau]: R peaks at lag tau
    assert int(ac.delays(q, k)[0][0, 0]) == tau
    v = torch.zeros(1, 1, T, 2)
    v[:, :, t0] = 1.0
    out = ac(q, k, v)
    assert out[0, 0, :, 0].nonzero().flatten().tolist() == [(t0 - tau) % T]  # out[t] = v[(t + τ) mod T]


@pytest.mark.parametrize("train", [False, True])
def test_map_reproduces_the_output(train):
    ac = build_attention("autocorrelation", factor=2.0).train(train)
    q, k, v = (torch.randn(3, 2, 12, 4) for _ in range(3))
    w = ac.attention_map(q, k, v, None)
    torch.testing.assert_close(torch.einsum("bhts,bhsd->bhtd", w, v), ac(q, k, v), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 2, 12))
    if train:  # the reference shares the delays of the batch mean while training
        assert ac.delays(q, k)[0].unique(dim=0).shape[0] == 1


def test_per_sample_delays_make_training_batch_independent():
    ac = AutoCorrelation(factor=2, per_sample_delays=True).train()
    q, k, v = (torch.randn(4, 2, 18, 4) for _ in range(3))
    torch.testing.assert_close(ac(q, k, v)[:1], ac(q[:1], k[:1], v[:1]))
    with pytest.raises(ValueError, match="factor must be > 0"):
        AutoCorrelation(factor=0)
