"""Series models: iTransformer's tokens are the variates, PatchTST is channel independent, kernels are checked at
build time, and every model learns a noiseless seasonal series."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.attention.capabilities import CapabilityError
from attnlab.data.series import SeriesFrame, make_forecast_data
from attnlab.models import create_model
from attnlab.objectives.forecast import evaluate_forecast, forecast_step, model_predictor

SHAPE = dict(lookback=48, horizon=12)


def test_itransformer_permuting_variates_permutes_the_output():
    m = create_model("itransformer-tiny", num_variates=5, num_exogenous=0, **SHAPE).eval()
    x = torch.randn(3, 48, 5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(m(x[..., perm]), m(x)[..., perm], atol=1e-5, rtol=1e-5)
    # attention is genuinely across variates: perturbing variate 0 moves variate 1's forecast
    x2 = x.clone()
    x2[..., 0] += torch.randn(3, 48)  # not a constant shift, which RevIN removes
    assert (m(x2)[..., 1] - m(x)[..., 1]).abs().max() > 1e-4


def test_itransformer_exogenous_tokens_inform_targets():
    m = create_model("itransformer-tiny", num_variates=1, num_exogenous=2, **SHAPE).eval()
    x = torch.randn(2, 48, 3)
    assert m(x).shape == (2, 12, 1)
    x2 = x.clone()
    x2[..., 2] += torch.randn(2, 48)
    assert (m(x2) - m(x)).abs().max() > 1e-4


def test_patchtst_channels_are_independent():
    m = create_model("patchtst-tiny", num_variates=3, num_exogenous=1, **SHAPE).eval()
    x = torch.randn(2, 48, 4)
    y = m(x)
    assert y.shape == (2, 12, 3)
    x2 = x.clone()
    x2[..., 1] += torch.randn(2, 48)
    x2[..., 3] += 5.0  # the exogenous column is not read
    y2 = m(x2)
    assert torch.equal(y2[..., 0], y[..., 0]) and torch.equal(y2[..., 2], y[..., 2])
    assert not torch.equal(y2[..., 1], y[..., 1])
    perm = torch.tensor([2, 0, 1, 3])
    torch.testing.assert_close(m(x[..., perm]), y[..., perm[:3]], atol=1e-6, rtol=1e-6)


def test_patchtst_takes_any_bidirectional_kernel_and_refuses_others():
    for kernel in ("sliding_window", "linear"):
        m = create_model("patchtst-tiny", num_variates=1, num_exogenous=0, attention=kernel, **SHAPE)
        assert m(torch.randn(2, 48, 1)).shape == (2, 12, 1)
    sched = create_model("patchtst-tiny", num_variates=1, num_exogenous=0, num_layers=2,
                         attention=["softmax", "sliding_window"], **SHAPE)
    assert [b.attn.kernel.name for b in sched.blocks] == ["softmax", "sliding_window"]
    with pytest.raises(CapabilityError, match=r"attention 'window' .*kernels that can: \[.*'softmax'"):
        create_model("patchtst-tiny", num_variates=1, num_exogenous=0, attention="window", **SHAPE)


def test_timexer_exogenous_tokens_reach_the_forecast_only_through_the_global_token():
    m = create_model("timexer-tiny", num_variates=2, num_exogenous=3, **SHAPE).eval()
    x = torch.randn(3, 48, 5)
    y = m(x)
    assert y.shape == (3, 12, 2) and m.num_patches == 6
    perm = torch.tensor([0, 1, 4, 2, 3])  # permuting exogenous tokens: cross-attention is a set operation
    torch.testing.assert_close(m(x[..., perm]), y, atol=1e-6, rtol=1e-6)
    x2 = x.clone()
    x2[..., 2:] += torch.randn(3, 48, 3)
    assert (m(x2) - y).abs().max() > 1e-6  # small at initialisation, but there
    n1 = m.num_patches + 1
    with torch.no_grad():  # zero the head's weights on the global-token slot (d-major flatten: index i * (N+1) + N)
        m.head.weight[:, n1 - 1::n1] = 0
    torch.testing.assert_close(m(x2), m(x), atol=0, rtol=0)  # one layer: exogenous values no longer matter
    with pytest.raises(ValueError, match="lookback divisible by patch_size: 50 % 8 = 2"):
        create_model("timexer-tiny", num_variates=1, num_exogenous=0, lookback=50, horizon=12)
    with pytest.raises(CapabilityError, match=r"set model.cross_attention to one of \[.*'softmax'"):
        create_model("timexer-tiny", num_variates=1, num_exogenous=1, cross_attention="sliding_window", **SHAPE)


def test_timexer_with_future_exogenous_values():
    torch.manual_seed(0)
    m = create_model("timexer-tiny", num_variates=1, num_exogenous=2, future_exog=True, **SHAPE).eval()
    assert m.uses_future_exog and m.exo_proj.weight.shape[1] == 48 + 12  # each exogenous token: look-back + horizon
    x, fut = torch.randn(3, 48, 3), torch.randn(3, 12, 2)
    y = m(x, future_exog=fut)
    assert y.shape == (3, 12, 1)
    assert (m(x, future_exog=fut + 1.0) - y).abs().max() > 1e-6      # the horizon's values reach the forecast
    torch.testing.assert_close(m.revin._mean[0, 0], x[0].mean(0))   # ... but not the look-back's statistics
    # With the horizon columns of the exogenous projection zeroed, it is the look-back-only TimeXer (same weights).
    plain = create_model("timexer-tiny", num_variates=1, num_exogenous=2, **SHAPE).eval()
    state = {k: v for k, v in m.state_dict().items()}
    state["exo_proj.weight"] = state["exo_proj.weight"][:, :48].clone()
    plain.load_state_dict(state)
    with torch.no_grad():
        m.exo_proj.weight[:, 48:] = 0
    torch.testing.assert_close(m(x, future_exog=fut), plain(x), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"pass future_exog of shape \(batch, 12, 2\)"):
        m(x)
    with pytest.raises(ValueError, match=r"expects future_exog of shape \(3, 12, 2\).*\(3, 12, 3\)"):
        m(x, future_exog=torch.randn(3, 12, 3))
    with pytest.raises(ValueError, match="reads the look-back only"):
        plain(x, future_exog=fut)
    with pytest.raises(ValueError, match="PatchTST does not read exogenous values over the horizon; use TimeXer"):
        create_model("patchtst-tiny", num_variates=1, num_exogenous=2, future_exog=True, **SHAPE)
    with pytest.raises(ValueError, match="future_exog needs exogenous columns"):
        create_model("timexer-tiny", num_variates=1, num_exogenous=0, future_exog=True, **SHAPE)


def test_autoformer_without_seasonal_paths_returns_the_trend_input():
    m = create_model("autoformer-tiny", num_variates=2, num_exogenous=1, **SHAPE).eval()
    x = torch.randn(2, 48, 3)
    assert m(x).shape == (2, 12, 2)
    with torch.no_grad():  # no seasonal projection and no trend correction: the forecast is trend_init's horizon
        m.proj.weight.zero_()
        m.proj.bias.zero_()
        for conv in m.dec_trend:
            conv.weight.zero_()
    _, trend_init = m.decoder_inputs(x)
    torch.testing.assert_close(m(x), trend_init[:, -12:, :2], atol=1e-6, rtol=0)  # = mean of each window
    torch.testing.assert_close(m(x), x[..., :2].mean(1, keepdim=True).expand(-1, 12, -1), atol=1e-6, rtol=0)
    assert [s.kernel.name for s in m.enc_attn] == ["autocorrelation"] and m.label_len == 24
    m = create_model("autoformer-tiny", num_variates=1, num_exogenous=0, attention="sliding_window", **SHAPE)
    assert m(torch.randn(2, 48, 1)).shape == (2, 12, 1)  # the auto-correlation swapped for another kernel


def test_models_check_their_inputs():
    m = create_model("patchtst-tiny", num_variates=2, num_exogenous=0, **SHAPE)
    with pytest.raises(ValueError, match=r"expects float inputs of shape \(batch, 48, 2\)"):
        m(torch.randn(2, 40, 2))
    with pytest.raises(ValueError, match="needs model.lookback, model.horizon, model.num_variates"):
        create_model("dlinear")


def seasonal_data():
    t = np.arange(1500)
    y = np.sin(2 * np.pi * t / 24) + 0.5 * np.sin(2 * np.pi * t / 8 + 1)  # noiseless, period 24
    ts = np.datetime64("2024-01-01T00:00", "s") + t * np.timedelta64(3600, "s")
    return make_forecast_data(SeriesFrame("seasonal", ts, y[:, None], ("y",), ("y",), ()), **SHAPE)


# Autoformer (no RevIN, decomposition with a 25-step moving average) settles at ~3e-3 within the budget
@pytest.mark.parametrize("preset, steps, lr, tol", [
    ("patchtst-tiny", 300, 1e-2, 1e-3), ("itransformer-tiny", 300, 1e-2, 1e-3), ("timexer-tiny", 300, 1e-2, 1e-3),
    ("autoformer-tiny", 300, 1e-2, 5e-3), ("dlinear", 300, 1e-2, 1e-3), ("nlinear", 300, 1e-2, 1e-3)])
def test_each_model_learns_a_noiseless_seasonal_series(preset, steps, lr, tol):
    d = seasonal_data()
    torch.manual_seed(0)
    m = create_model(preset, num_variates=1, num_exogenous=0, **SHAPE)
    before = evaluate_forecast(model_predictor(m), d.test, 256)["mse"]
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = d.train.batch(torch.randint(len(d.train), (32,), generator=g))
        loss, _ = forecast_step(m, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    after = evaluate_forecast(model_predictor(m), d.test, 256)["mse"]
    assert after < tol and after < before / 100, (before, after)
