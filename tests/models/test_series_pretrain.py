"""PatchTST masked-patch pretraining: the mask keeps exactly int(N (1 - r)) patches per (sample, variate), the loss
scores masked patches only, and a pretraining run initialises a forecasting run (`model.init_from`)."""

from __future__ import annotations

import json

import pytest
import torch

from attnlab.config import build_config
from attnlab.models import create_model
from attnlab.models.series import random_patch_mask
from attnlab.objectives.forecast import patch_mask_step
from attnlab.train import train


@pytest.mark.parametrize("n, ratio", [(12, 0.4), (42, 0.4), (7, 0.5), (5, 0.9)])
def test_mask_keeps_exactly_the_stated_share(n, ratio):
    g = torch.Generator().manual_seed(0)
    m = random_patch_mask(3, 4, n, ratio, g)
    assert m.shape == (3, 4, n)
    assert ((~m).sum(-1) == int(n * (1 - ratio))).all()
    if 0 < int(n * (1 - ratio)) < n:  # drawn per sample and variate
        assert len({tuple(row) for row in m.reshape(-1, n).tolist()}) > 1
    with pytest.raises(ValueError, match="mask ratio"):
        random_patch_mask(1, 1, 4, 1.0)


class Fixed(torch.nn.Module):
    """A stand-in 'model' returning given tensors, to test the loss alone."""

    def __init__(self, pred, target, mask):
        super().__init__()
        self.out = (pred, target, mask)

    def forward(self, inputs):
        return self.out


def test_loss_scores_masked_patches_only():
    target = torch.randn(2, 3, 6, 4)
    mask = random_patch_mask(2, 3, 6, 0.5, torch.Generator().manual_seed(1))
    pred = torch.where(mask[..., None], target, torch.randn_like(target) * 10)  # exact where masked
    loss, _ = patch_mask_step(Fixed(pred, target, mask), {"inputs": torch.zeros(1)})
    assert float(loss) == 0.0  # wrong only on unmasked patches: they do not count
    pred2 = pred + mask[..., None] * 1.0  # off by 1 on every masked value
    loss2, metrics = patch_mask_step(Fixed(pred2, target, mask), {"inputs": torch.zeros(1)})
    assert float(loss2) == pytest.approx(1.0) and float(metrics["masked_mse"]) == pytest.approx(1.0)


def test_pretraining_model_masks_zero_patches():
    m = create_model("patchtst-pretrain-tiny", lookback=48, horizon=12, num_variates=2, num_exogenous=0).eval()
    x = torch.randn(3, 48, 2)
    pred, patches, mask = m(x)
    assert pred.shape == patches.shape == (3, 2, 7, 8) and mask.shape == (3, 2, 7)
    assert not hasattr(m, "head") and m.recon.out_features == 8
    # the reconstruction of a sample does not depend on the values of its masked patches
    x2 = x.clone()
    first = mask[0, 0].nonzero().flatten()[0].item()
    x2[0, first * 8:(first + 1) * 8, 0] += 3.0
    # RevIN statistics see every value, masked or not: compare with RevIN off
    m_norev = create_model("patchtst-pretrain-tiny", lookback=48, horizon=12, num_variates=2, num_exogenous=0,
                           revin=False).eval()
    p1, _, _ = m_norev(x, mask=mask)
    p2, _, _ = m_norev(x2, mask=mask)
    torch.testing.assert_close(p1, p2, atol=0, rtol=0)


def test_pretrain_then_finetune(tmp_path):
    data = {"dataset": "elnino", "lookback": 48, "horizon": 12, "batch_size": 16}
    tr = {"steps": 40, "lr": 3e-3, "warmup_steps": 5, "eval_every": 20, "checkpoint_every": 40, "precision": "fp32"}
    pre = build_config({"model": {"name": "patchtst-pretrain-tiny"}, "data": data, "objective": {"name": "patch_mask"},
                        "train": {**tr, "run_dir": str(tmp_path / "pre")}})
    r = train(pre, progress=False)
    assert r.losses[-1] < r.losses[0]
    assert not (tmp_path / "pre" / "test.json").exists()
    fine = build_config({"model": {"name": "patchtst-tiny", "patch_stride": 8, "init_from": str(tmp_path / "pre")},
                         "data": data, "objective": {"name": "forecast"}, "train": {**tr, "run_dir": str(tmp_path / "ft")}})
    train(fine, progress=False)
    report = json.loads((tmp_path / "ft" / "test.json").read_text())
    assert report["model"]["mse"] < report["baselines"]["repeat"]["mse"]
    with pytest.raises(ValueError, match="objective patch_mask pretrains a PatchTSTPretrain"):
        train(build_config({"model": {"name": "patchtst-tiny"}, "data": data, "objective": {"name": "patch_mask"},
                            "train": {**tr, "run_dir": str(tmp_path / "bad")}}), progress=False)
