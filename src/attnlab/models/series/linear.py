"""The linear baselines of Zeng, Chen, Zhang & Xu 2023 ("Are Transformers Effective for Time Series Forecasting?",
AAAI, arXiv 2205.13504), trained by the same trainer, objective and protocol as the Transformers.

One map ``R^L -> R^T`` along time, shared by the target variates (``individual=False``, the reference default);
default ``nn.Linear`` initialisation (the official code). Exogenous columns are not read.

- :class:`NLinear`: subtract the last value, map, add it back: ``ŷ = W (x - x_L) + b + x_L``.
- :class:`DLinear`: Autoformer's decomposition (moving average of ``moving_avg`` steps, edge-padded), one map on
  the seasonal part and one on the trend: ``ŷ = W_s s + b_s + W_t t + b_t``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import ModelConfig
from .layers import check_inputs, decompose, series_shape


class _LinearForecaster(nn.Module):
    causal = False
    forecaster = True  # what the forecast objective trains (attnlab.train.build)

    def __init__(self, cfg: ModelConfig, name: str):
        super().__init__()
        self.cfg = cfg
        self.shape = series_shape(cfg, name)
        self.name = name

    def targets(self, inputs: Tensor) -> Tensor:
        L, _, c_t, c_x = self.shape
        check_inputs(inputs, L, c_t + c_x, self.name)
        return inputs[..., :c_t]


class NLinear(_LinearForecaster):
    """``inputs (B, L, C)`` -> ``(B, T, C_t)``: a linear map of the window minus its last value (see module)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, "NLinear")
        self.linear = nn.Linear(self.shape[0], self.shape[1])

    def forward(self, inputs: Tensor) -> Tensor:
        x = self.targets(inputs)
        last = x[:, -1:].detach()  # (B, 1, C)
        return self.linear((x - last).transpose(1, 2)).transpose(1, 2) + last


class DLinear(_LinearForecaster):
    """``inputs (B, L, C)`` -> ``(B, T, C_t)``: seasonal and trend maps summed (see module).

    Raises:
        ValueError: an even ``moving_avg`` (at build).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, "DLinear")
        if cfg.moving_avg % 2 == 0:
            raise ValueError(f"moving_avg={cfg.moving_avg} must be odd (an even kernel shortens the trend)")
        L, T = self.shape[:2]
        self.seasonal, self.trend = nn.Linear(L, T), nn.Linear(L, T)

    def forward(self, inputs: Tensor) -> Tensor:
        s, t = decompose(self.targets(inputs), self.cfg.moving_avg)
        return (self.seasonal(s.transpose(1, 2)) + self.trend(t.transpose(1, 2))).transpose(1, 2)
