"""Building blocks shared by the series family: instance normalisation, patching, trend decomposition, shape checks
and the build-time kernel probe.

Every series model maps ``inputs (B, L, C)`` (target columns first, then exogenous ones) to a forecast
``(B, T, C_t)`` of the target columns, on the z-scored scale of the data (:mod:`attnlab.data.series.windows`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ...attention.capabilities import CapabilityError
from ...attention.context import AttentionContext
from ..config import ModelConfig


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al. 2022, "Reversible Instance Normalization for Accurate
    Time-Series Forecasting against Distribution Shift"), as in PatchTST's ``RevIN.py``.

    ``norm``: per (sample, channel), ``x̂ = (x - μ) / σ`` with ``μ`` the mean over time and ``σ = sqrt(var + eps)``
    (population variance), both detached; with ``affine``, ``x̂ γ_c + β_c``. ``denorm`` undoes it on any number of
    steps (``(y - β) / (γ + eps²)``, then ``y σ + μ``). Shapes ``(B, L, C)`` -> ``(B, L, C)``; ``denorm`` reads the
    statistics of the last ``norm`` call (of its first ``C_out`` channels).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = False):
        super().__init__()
        self.eps, self.affine = eps, affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        self._mean: Tensor | None = None
        self._std: Tensor | None = None

    def norm(self, x: Tensor) -> Tensor:
        self._mean = x.mean(1, keepdim=True).detach()  # (B, 1, C)
        self._std = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + self.eps).detach()
        x = (x - self._mean) / self._std
        return x * self.weight + self.bias if self.affine else x

    def norm_like(self, x: Tensor, channels: slice) -> Tensor:
        """Other steps ``(B, T, c)`` of ``channels`` normalised with the last :meth:`norm` call's statistics (e.g.
        exogenous values over the horizon, which must not leak into the look-back's statistics)."""
        if self._mean is None:
            raise RuntimeError("RevIN.norm_like before norm")
        x = (x - self._mean[..., channels]) / self._std[..., channels]
        return x * self.weight[channels] + self.bias[channels] if self.affine else x

    def denorm(self, y: Tensor) -> Tensor:
        if self._mean is None:
            raise RuntimeError("RevIN.denorm before norm")
        c = y.shape[-1]
        if self.affine:
            y = (y - self.bias[:c]) / (self.weight[:c] + self.eps ** 2)
        return y * self._std[..., :c] + self._mean[..., :c]


def patchify(x: Tensor, patch_len: int, stride: int) -> Tensor:
    """PatchTST patching (Nie et al. 2023): append ``stride`` copies of the last step (``ReplicationPad1d((0, S))``),
    then windows of ``patch_len`` every ``stride`` steps. ``(..., L)`` -> ``(..., N, P)`` with
    ``N = (L - P) // S + 2``.

    Raises:
        ValueError: ``L < patch_len`` (no whole patch).
    """
    L = x.shape[-1]
    if L < patch_len:
        raise ValueError(f"look-back {L} is shorter than patch_size={patch_len}; lower model.patch_size or raise "
                         "data.lookback")
    padded = torch.cat([x, x[..., -1:].expand(*x.shape[:-1], stride)], dim=-1)
    return padded.unfold(-1, patch_len, stride)


def num_patches(lookback: int, patch_len: int, stride: int) -> int:
    return (lookback - patch_len) // stride + 2


def decompose(x: Tensor, kernel: int) -> tuple[Tensor, Tensor]:
    """Series decomposition of Autoformer (Wu et al. 2021): trend = moving average over time with the first/last
    step repeated ``(k - 1) / 2`` times at each end; seasonal = ``x - trend``. ``(B, L, C)`` -> two ``(B, L, C)``.

    Raises:
        ValueError: an even ``kernel`` (the trend would be one step short).
    """
    if kernel % 2 == 0:
        raise ValueError(f"moving_avg={kernel} must be odd (an even kernel shortens the trend by one step)")
    half = (kernel - 1) // 2
    padded = torch.cat([x[:, :1].expand(-1, half, -1), x, x[:, -1:].expand(-1, half, -1)], dim=1)
    trend = nn.functional.avg_pool1d(padded.transpose(1, 2), kernel, stride=1).transpose(1, 2)
    return x - trend, trend


FUTURE_EXOG_MODELS = ("TimeXer",)


def series_shape(cfg: ModelConfig, model: str) -> tuple[int, int, int, int]:
    """``(lookback, horizon, num_variates, num_exogenous)`` of a series config.

    Raises:
        ValueError: one of them unset (they come from the data when a run is built; set them to build by hand);
            ``future_exog`` for a model that does not read exogenous values over the horizon, or without exogenous
            columns.
    """
    missing = [k for k in ("lookback", "horizon", "num_variates") if getattr(cfg, k) is None]
    if missing:
        raise ValueError(f"{model} needs model.{', model.'.join(missing)} (set from the data by `attnlab train`; "
                         "give them when building the model by hand)")
    if cfg.future_exog and model not in FUTURE_EXOG_MODELS:
        raise ValueError(f"model.future_exog: {model} does not read exogenous values over the horizon; use "
                         f"{' or '.join(FUTURE_EXOG_MODELS)} (timexer-small), or set model.future_exog=false")
    if cfg.future_exog and not cfg.num_exogenous:
        raise ValueError("model.future_exog needs exogenous columns: set data.exogenous or data.calendar")
    return cfg.lookback, cfg.horizon, cfg.num_variates, cfg.num_exogenous or 0


def check_inputs(x: Tensor, lookback: int, channels: int, model: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a float ``(B, lookback, channels)`` tensor."""
    if x.dim() != 3 or x.shape[1] != lookback or x.shape[2] != channels or not x.is_floating_point():
        raise ValueError(f"{model} expects float inputs of shape (batch, {lookback}, {channels}) (look-back, target + "
                         f"exogenous columns), got {tuple(x.shape)} {x.dtype}")


def check_kernels(shells: list[nn.Module], tokens: int, model: str) -> None:
    """Run every distinct kernel of ``shells`` once on ``tokens`` bidirectional tokens (no grid), so a kernel that
    cannot serve the model fails at build time.

    Raises:
        CapabilityError: naming the kernel, why, and the registered kernels that can serve.
    """
    from ...attention.registry import build_attention, list_attention

    ctx = AttentionContext(causal=False)
    seen: dict[str, str] = {}
    for shell in shells:
        if shell.kernel.name not in seen:
            seen[shell.kernel.name] = _probe(shell.kernel, shell.num_heads, shell.head_dim, tokens, ctx)
    bad = {n: why for n, why in seen.items() if why}
    if not bad:
        return
    ok = []
    for name in list_attention():
        try:
            k = build_attention(name, structural=dict(num_heads=2, num_kv_heads=2, head_dim=8, max_seq_len=tokens))
        except (ValueError, TypeError):
            continue
        if k.capabilities.bidirectional and not _probe(k, 2, 8, tokens, ctx):
            ok.append(name)
    name, why = next(iter(bad.items()))
    raise CapabilityError(f"attention {name!r} cannot attend over the {tokens} tokens of {model} ({why}); kernels "
                          f"that can: {ok}")


def _probe(kernel: nn.Module, heads: int, head_dim: int, tokens: int, ctx: AttentionContext) -> str:
    q = torch.randn(1, heads, tokens, head_dim)
    was = kernel.training
    try:
        with torch.no_grad():
            kernel.eval()(q, q, q, dataclasses.replace(ctx))
    except (ValueError, CapabilityError, RuntimeError) as e:
        return str(e).split(";")[0]
    finally:
        kernel.train(was)
    return ""
