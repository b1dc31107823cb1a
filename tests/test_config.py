"""Typed run configs: YAML + dotted overrides, preset merging, readable errors, the generated reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attnlab.config import RunConfig, build_config, load_config, parse_overrides
from attnlab.config_reference import config_reference

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "char-gpt.yaml"


def test_default_recipe_loads():
    cfg = load_config(RECIPE)
    assert cfg.model.name == "gpt-char-small" and cfg.model.attention == "softmax"
    assert cfg.data.dataset == "kjv" and cfg.objective.name == "lm" and cfg.train.run_dir == "runs/char-gpt"
    assert cfg.data.seq_len <= cfg.model.max_seq_len


def test_overrides_parse_yaml_values():
    assert parse_overrides(["train.lr=3e-4", "train.grad_clip=null", "model.attention=[softmax, softmax]",
                            "model.attention_options={dropout: 0.1}", "model.bias=false", "data.dataset=my file.txt"]) == {
        "train": {"lr": 3e-4, "grad_clip": None},
        "model": {"attention": ["softmax", "softmax"], "attention_options": {"dropout": 0.1}, "bias": False},
        "data": {"dataset": "my file.txt"},
    }
    cfg = load_config(RECIPE, ["train.lr=3e-4", "model.num_layers=2", "model.attention=[softmax, softmax]"])
    assert cfg.train.lr == 3e-4 and cfg.model.num_layers == 2 and cfg.model.attention == ["softmax", "softmax"]


def test_preset_values_fill_unset_model_keys():
    cfg = build_config({"model": {"name": "gpt-tiny"}})
    assert (cfg.model.dim, cfg.model.num_layers, cfg.model.max_seq_len) == (64, 2, 128)
    cfg = build_config({"model": {"name": "gpt-tiny", "dim": 32}})
    assert (cfg.model.dim, cfg.model.num_heads) == (32, 4)
    # dim=390 is divisible by gpt-char-small's 6 heads (not by ModelConfig's default 4): validated after merging
    assert build_config({"model": {"dim": 390}}).model.num_heads == 6
    mc = cfg.model.to_model_config(vocab_size=65)
    assert mc.vocab_size == 65 and mc.dim == 32 and not hasattr(mc, "name")
    with pytest.raises(ValueError, match="vocab_size=10 is smaller than the dataset's vocabulary"):
        build_config({"model": {"vocab_size": 10}}).model.to_model_config(65)


@pytest.mark.parametrize("override, fragments", [
    ("train.lrr=1", ["unknown config key 'train.lrr'", "Did you mean train.lr"]),
    ("trian.lr=1", ["unknown config key 'trian'", "Did you mean train"]),
    ("model.num_head=2", ["'model.num_head'", "model.num_heads"]),
    ("data.batchsize=2", ["'data.batchsize'", "data.batch_size"]),
])
def test_unknown_keys_name_the_closest(override, fragments):
    with pytest.raises(ValueError) as err:
        load_config(RECIPE, [override])
    for f in fragments:
        assert f in str(err.value), str(err.value)


@pytest.mark.parametrize("override, fragments", [
    ("train.steps=abc", ["train.steps", "expected int", "'abc'"]),
    ("train.precision=fp16", ["train.precision", "'auto', 'fp32', 'bf16'", "'fp16'"]),
    ("data.batch_size=0", ["data.batch_size", "greater than or equal to 1"]),
    ("model.dropout=[1]", ["model.dropout", "expected float"]),
    ("train.grad_clip=none", ["train.grad_clip", "float"]),
    ("model.name=gpt-chr-small", ["gpt-char-small"]),
    ("task.name=lmm", ["unknown objective 'lmm'", "lm"]),
    ("model.attention=sofmax", ["unknown attention 'sofmax'"]),
])
def test_wrong_values_name_the_expected_type(override, fragments):
    with pytest.raises(ValueError) as err:
        load_config(RECIPE, [override])
    for f in fragments:
        assert f in str(err.value), str(err.value)


def test_malformed_overrides_and_files(tmp_path):
    with pytest.raises(ValueError, match="section.key=value"):
        parse_overrides(["train.lr"])
    with pytest.raises(ValueError, match="section.key=value"):
        parse_overrides(["train..lr=1"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(RECIPE, ["train.lr=5e-4", "model.attention_options={dropout: 0.1}"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert load_config(tmp_path) == cfg  # a run directory works as well


def test_reference_doc_is_current():
    doc = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert doc == config_reference(), "regenerate with: python -m attnlab.config_reference docs/config.md"
    for section in ("model", "data", "objective", "train"):
        for key in RunConfig.model_fields[section].annotation.model_fields:
            assert f"`{section}.{key}`" in doc


def test_old_task_section_is_read_as_objective(tmp_path):
    """Recipes and run directories written before `task` was renamed `objective` still load."""
    raw = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    raw["task"] = {"name": "classify"}
    del raw["objective"]
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    assert load_config(run).objective.name == "classify"  # a run directory's saved config.yaml
    assert load_config(run, ["objective.name=regression"]).objective.name == "regression"  # old file, new override
    assert load_config(RECIPE, ["task.name=classify"]).objective.name == "classify"  # new file, old override
    assert build_config({"task": {"name": "regression"}}).objective.name == "regression"
    resaved = tmp_path / "new.yaml"
    load_config(run).save(resaved)
    assert "task" not in yaml.safe_load(resaved.read_text()) and load_config(resaved) == load_config(run)


def test_task_and_objective_together_is_an_error(tmp_path):
    raw = {"task": {"name": "lm"}, "objective": {"name": "classify"}}
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    for call in (lambda: load_config(tmp_path / "both.yaml"), lambda: build_config(raw),
                 lambda: load_config(RECIPE, ["task.name=lm", "objective.name=lm"])):
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert "'task'" in msg and "'objective'" in msg and "\n" not in msg, msg
