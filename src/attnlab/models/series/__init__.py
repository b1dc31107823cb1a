"""Series family: forecasters mapping ``inputs (B, L, C)`` (target columns first, then exogenous ones) to
``(B, T, C_t)``: PatchTST, iTransformer and TimeXer (exogenous
variables through cross-attention) on the shared body with any attention kernel, DLinear and NLinear, and the
closed-form baselines of :mod:`.baselines` (seasonal naive, ridge on lags, hourly-binned regression)."""

from . import presets  # noqa: F401  (registers the series presets)
from .itransformer import ITransformer
from .layers import RevIN, decompose, patchify
from .linear import DLinear, NLinear
from .patchtst import PatchTST
from .timexer import TimeXer

__all__ = ["DLinear", "ITransformer", "NLinear", "PatchTST", "RevIN", "TimeXer", "decompose", "patchify"]
