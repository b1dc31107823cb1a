"""Series family: forecasters mapping ``inputs (B, L, C)`` (target columns first, then exogenous ones) to
``(B, T, C_t)``: PatchTST, iTransformer, TimeXer (exogenous
variables through cross-attention) and Autoformer (decomposition, the ``autocorrelation`` kernel) on the shared
body's shells, and a classifier of irregularly sampled series (:mod:`.irregular`) with any attention kernel, DLinear and NLinear, and the
closed-form baselines of :mod:`.baselines` (seasonal naive, ridge on lags, hourly-binned regression)."""

from . import presets  # noqa: F401  (registers the series presets)
from .autoformer import Autoformer
from .irregular import IrregularClassifier, continuous_time_encoding
from .itransformer import ITransformer
from .layers import RevIN, decompose, patchify
from .linear import DLinear, NLinear
from .patchtst import PatchTST
from .pretrain import PatchTSTPretrain, random_patch_mask
from .timexer import TimeXer

__all__ = ["Autoformer", "DLinear", "ITransformer", "IrregularClassifier", "NLinear", "PatchTST", "PatchTSTPretrain", "RevIN", "TimeXer", "random_patch_mask", "decompose", "patchify"]
