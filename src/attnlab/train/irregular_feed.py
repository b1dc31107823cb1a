"""``objective.name: irregular``: the synthetic irregularly sampled classification task
(:mod:`attnlab.data.series.irregular`) as the Trainer's data, for :class:`~attnlab.models.series.IrregularClassifier`.

``data.dataset: irregular`` with ``data.options`` among ``num_train`` (1000), ``num_test`` (300) and the generator's
options (``num_classes``, ``channels``, ``min_obs``, ``max_obs``, ``observe``, ``noise``). The last 10% of the
generated training samples (``data.val_fraction``) validate; the test samples come from another seed and are scored
only by :func:`irregular_report` (accuracy over every test sample).
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from ..config import RunConfig
from ..data.series.irregular import IrregularSplit, make_irregular
from .feeds import SplitSampler, TokenIds

DATASET = "irregular"


class IrregularFeed:
    """Train / validation / test :class:`IrregularSplit` s behind the Trainer's feed interface (kind ``irregular``)."""

    kind = "irregular"
    vocab_size = None

    def __init__(self, train: IrregularSplit, val: IrregularSplit, test: IrregularSplit, num_classes: int):
        self.train, self.val, self.test, self.num_classes = train, val, test, num_classes
        self.tokenizer = TokenIds(None, "series")
        self.seq_len = train.times.shape[1]

    def sampler(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                grad_accum: int = 1) -> SplitSampler:
        return SplitSampler(self.train, batch_size, seed, rank, world_size, grad_accum)

    def eval_batches(self, batch_size: int, num_batches: int, rank: int = 0,
                     world_size: int = 1) -> list[dict[str, Tensor]]:
        n, per = len(self.val), batch_size * world_size
        return [self.val.batch(torch.arange(s, min(s + per, n))[rank::world_size]) for s in range(0, n, per)]

    def model_shape(self) -> dict[str, int]:
        return {"num_variates": self.train.values.shape[2], "num_classes": self.num_classes}


def irregular_feed(cfg: RunConfig) -> IrregularFeed:
    """The feed of an ``irregular`` run config.

    Raises:
        ValueError: another ``data.dataset``, or an option the generator does not take (lists the valid ones).
    """
    d = cfg.data
    if d.dataset != DATASET:
        raise ValueError(f"objective irregular trains on data.dataset={DATASET!r} (the synthetic irregular task), "
                         f"not {d.dataset!r}")
    valid = {"num_train", "num_test", *(k for k in inspect.signature(make_irregular).parameters
                                        if k not in ("num_samples", "seed"))}
    unknown = sorted(set(d.options) - valid)
    if unknown:
        raise ValueError(f"unknown data.options {unknown} for {DATASET!r}; valid: {sorted(valid)}")
    opts = {k: v for k, v in d.options.items() if k not in ("num_train", "num_test")}
    full = make_irregular(d.options.get("num_train", 1000), seed=0, **opts)
    n_val = max(1, int(len(full) * d.val_fraction))
    cut = len(full) - n_val
    part = lambda sl: IrregularSplit(full.times[sl], full.values[sl], full.observed[sl], full.padding[sl],  # noqa: E731
                                     full.labels[sl])
    test = make_irregular(d.options.get("num_test", 300), seed=1, **opts)
    return IrregularFeed(part(slice(0, cut)), part(slice(cut, None)), test, opts.get("num_classes", 3))


@torch.no_grad()
def irregular_report(model: nn.Module, feed: IrregularFeed, batch_size: int = 256, device=None) -> dict:
    """Accuracy and cross-entropy over every test sample (eval mode)."""
    was = model.training
    model.eval()
    correct, loss, n = 0, 0.0, len(feed.test)
    for s in range(0, n, batch_size):
        b = {k: v.to(device) if device is not None else v for k, v in feed.test.batch(slice(s, s + batch_size)).items()}
        logits = model(b["times"], b["values"], b["observed"], b["padding"]).float()
        correct += int((logits.argmax(-1) == b["targets"]).sum())
        loss += float(nn.functional.cross_entropy(logits, b["targets"], reduction="sum"))
    model.train(was)
    return {"accuracy": correct / n, "loss": loss / n, "examples": n}
