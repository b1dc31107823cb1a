"""The classify and regression task steps: losses and metrics against hand computations, registry, errors."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.data import get_dataset
from attnlab.objectives import get_objective, model_outputs
from attnlab.objectives.classify import classify_step
from attnlab.objectives.regression import regression_step
from attnlab.train.feeds import DatasetFeed, LMDatasetFeed


class Fixed(torch.nn.Module):
    """Returns a fixed output whatever the input (records the call's keyword arguments)."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out, self.kwargs = out, None

    def forward(self, x, **kwargs):
        self.kwargs = kwargs
        return self.out


def test_regression_step_is_the_mse_over_scored_positions_only():
    pred = torch.tensor([[1.0, 5.0, 2.0, 100.0], [0.0, -1.0, 3.0, 7.0]])
    targets = torch.tensor([[0.0, 5.0, 4.0, 0.0], [1.0, 0.0, 3.0, -50.0]])
    mask = torch.tensor([[True, False, True, False], [True, True, True, False]])
    loss, metrics = regression_step(Fixed(pred), {"inputs": torch.zeros(2, 4, 3), "targets": targets, "loss_mask": mask})
    # scored errors: (1-0)^2 = 1, (2-4)^2 = 4, (0-1)^2 = 1, (-1-0)^2 = 1, (3-3)^2 = 0 -> 7 / 5
    assert loss.item() == pytest.approx(7 / 5)
    assert metrics["mse"].item() == pytest.approx(1.4) and metrics["positions"].item() == 5
    loss, _ = regression_step(Fixed(pred[..., None]), {"inputs": torch.zeros(2, 4, 3), "targets": targets})
    assert loss.item() == pytest.approx(((pred - targets) ** 2).mean().item())  # no mask: every position, (B, T, 1) ok
    with pytest.raises(ValueError, match="no scored position"):
        regression_step(Fixed(pred), {"inputs": torch.zeros(2, 4, 3), "targets": targets,
                                      "loss_mask": torch.zeros(2, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="InContextRegressor"):
        regression_step(Fixed(pred[:, :3]), {"inputs": torch.zeros(2, 4, 3), "targets": targets})


def test_classify_step_loss_and_accuracy_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    targets = torch.tensor([0, 1])
    kpm = torch.tensor([[True, True, False], [True, True, True]])
    model = Fixed(logits)
    loss, metrics = classify_step(model, {"idx": torch.zeros(2, 3, dtype=torch.long), "targets": targets,
                                          "key_padding_mask": kpm})
    z0, z1 = math.log(math.exp(2) + 2), math.log(1 + math.e + math.exp(3))  # log-sum-exp of each row
    expected = ((z0 - 2.0) + (z1 - 1.0)) / 2  # -log softmax at the label, averaged
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"].item() == 0.5 and metrics["bits_per_example"].item() == pytest.approx(expected / math.log(2))
    assert model.kwargs["key_padding_mask"] is kpm  # the mask reaches the head
    with pytest.raises(ValueError, match="targets"):
        classify_step(model, {"idx": torch.zeros(2, 3, dtype=torch.long), "targets": torch.zeros(2, 3, dtype=torch.long)})


def test_classify_label_smoothing_by_hand_and_the_plain_loss_reported():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    targets = torch.tensor([0, 1])
    batch = {"idx": torch.zeros(2, 3, dtype=torch.long), "targets": targets}
    loss, metrics = classify_step(Fixed(logits), batch, label_smoothing=0.3)
    logp = logits.log_softmax(-1)
    nll, uniform = -logp[[0, 1], targets], -logp.mean(-1)  # label term and the eps / C spread
    assert loss.item() == pytest.approx((0.7 * nll + 0.3 * uniform).mean().item(), rel=1e-6)
    assert metrics["loss"].item() == pytest.approx(nll.mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        classify_step(Fixed(logits), batch, label_smoothing=1.0)


def test_steps_are_registered_and_outputs_dispatch_by_kind():
    assert get_objective("classify") is classify_step and get_objective("regression") is regression_step
    with pytest.raises(ValueError, match="unknown dataset kind 'vision'"):
        model_outputs("vision", Fixed(torch.zeros(1)), {})


def test_task_data_for_classify_and_regression():
    icl = DatasetFeed(get_dataset("icl_regression", dim=3, num_examples=4, num_train=16, num_test=8))
    assert icl.kind == "regression" and icl.vocab_size is None and icl.tokenizer.unit == "position"
    batch = icl.sampler(batch_size=4, seed=0).next()
    assert batch["inputs"].shape == (4, 8, 4) and batch["targets"].shape == (4, 8) and batch["loss_mask"].shape == (4, 8)
    lo = DatasetFeed(get_dataset("listops", max_length=16, num_train=16, num_test=10))
    assert lo.vocab_size == 17 and lo.tokenizer.unit == "example"
    evals = lo.eval_batches(batch_size=4, num_batches=5)
    assert [len(b["targets"]) for b in evals] == [4, 4, 2] and evals[0]["key_padding_mask"].shape == (4, 16)
    with pytest.raises(ValueError, match="kind 'regression'"):
        LMDatasetFeed(icl.dataset)


def test_trainer_reports_regression_loss_as_squared_error_not_bits():
    from attnlab.train.trainer import _loss_text

    icl = DatasetFeed(get_dataset("icl_regression", dim=3, num_examples=4, num_train=16, num_test=8))
    assert _loss_text(0.5, icl) == "0.5000 (mean squared error)"
    lo = DatasetFeed(get_dataset("listops", max_length=16, num_train=16, num_test=10))
    assert _loss_text(math.log(2), lo) == "0.6931 nats/example (1.000 bits/example)"
