"""A synthetic irregularly sampled, multi-channel classification task (the shape of light curves and ICU stays):
every sample is observed at its own random times, each channel only at some of them, with its own length.

Class ``k`` of ``num_classes``: channel 0 is a sinusoid of frequency ``0.1 (k + 1)`` cycles per time unit, channel 1
the same sinusoid delayed by a quarter period, the other channels noise; every observation adds Gaussian noise
(``noise``). Times are uniform on ``[0, duration)``, sorted; each sample has ``min_obs..max_obs`` time points; each
channel is observed at a time point with probability ``observe``. Nothing about the class is in the number or
placement of observations, only in values read at their times.

Tensors (``N`` samples, ``S = max_obs`` slots): ``times (N, S)`` float, ``values (N, S, C)`` float with 0 where not
observed, ``observed (N, S, C)`` bool, ``padding (N, S)`` bool (True = a real time point), ``labels (N,)`` long.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class IrregularSplit:
    times: Tensor
    values: Tensor
    observed: Tensor
    padding: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, index) -> dict[str, Tensor]:
        """Rows ``index`` as ``{"times", "values", "observed", "padding", "targets"}``."""
        return {"times": self.times[index], "values": self.values[index], "observed": self.observed[index],
                "padding": self.padding[index], "targets": self.labels[index]}


def make_irregular(num_samples: int = 1000, num_classes: int = 3, channels: int = 3, min_obs: int = 20,
                   max_obs: int = 40, duration: float = 10.0, observe: float = 0.6, noise: float = 0.1,
                   seed: int = 0) -> IrregularSplit:
    """``num_samples`` samples of the task in the module docstring, a pure function of the arguments.

    Raises:
        ValueError: fewer than 2 channels or classes, ``min_obs > max_obs``, ``observe`` outside (0, 1].
    """
    if channels < 2 or num_classes < 2 or not 1 <= min_obs <= max_obs or not 0 < observe <= 1:
        raise ValueError(f"need channels >= 2, num_classes >= 2, 1 <= min_obs <= max_obs, 0 < observe <= 1; got "
                         f"{channels}, {num_classes}, {min_obs}..{max_obs}, {observe}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_samples)
    times = np.zeros((num_samples, max_obs))
    values = np.zeros((num_samples, max_obs, channels))
    observed = np.zeros((num_samples, max_obs, channels), dtype=bool)
    padding = np.zeros((num_samples, max_obs), dtype=bool)
    for i, k in enumerate(labels):
        n = int(rng.integers(min_obs, max_obs + 1))
        t = np.sort(rng.uniform(0, duration, n))
        f, phase = 0.1 * (k + 1), rng.uniform(0, 2 * np.pi)
        sig = np.zeros((n, channels))
        sig[:, 0] = np.sin(2 * np.pi * f * t + phase)
        sig[:, 1] = np.sin(2 * np.pi * f * t + phase - np.pi / 2)
        sig += noise * rng.normal(size=sig.shape)
        obs = rng.random((n, channels)) < observe
        obs[~obs.any(1), 0] = True  # every time point observes something
        times[i, :n], values[i, :n], observed[i, :n], padding[i, :n] = t, np.where(obs, sig, 0.0), obs, True
    as_f = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    return IrregularSplit(as_f(times), as_f(values), torch.from_numpy(observed), torch.from_numpy(padding),
                          torch.from_numpy(labels.astype(np.int64)))
