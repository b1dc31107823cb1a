"""The distillation recipe: the generated reference is current, the shipped recipes load, the student starts from
the teacher's config.json, and a loss mapping on the command line replaces the recipe's."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnlab.distill.config import distill_reference, load_distill_config

ROOT = Path(__file__).resolve().parents[2]


def test_reference_is_current():
    doc = (ROOT / "docs" / "distill-config.md").read_text(encoding="utf-8")
    assert doc == distill_reference(), "regenerate with: python -m attnlab.distill docs/distill-config.md"


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs" / "distill").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load_with_the_teachers_architecture(recipe):
    cfg = load_distill_config(recipe)
    assert (cfg.model.dim, cfg.model.num_heads, cfg.model.num_layers, cfg.model.vocab_size) == (384, 12, 3, 30522)


def test_width_keeps_the_teachers_mlp_ratio_and_cli_losses_replace():
    cfg = load_distill_config(ROOT / "configs" / "distill" / "sparse-l3.yaml",
                              ["model.dim=192", "objective.losses={embedding_mse: 2, v1: 1}"])
    assert cfg.model.mlp_dim == 768
    assert cfg.objective.losses == {"embedding_mse": 2.0, "attention": 1.0, "value_relation": 1.0}
    with pytest.raises(ValueError, match="unknown config key 'objective.loss'. Did you mean objective.losses"):
        load_distill_config(None, ["objective.loss={v1: 1}"])
    with pytest.raises(ValueError, match="no loss with a positive weight"):
        load_distill_config(None, ["objective.losses={v1: 0}"])
