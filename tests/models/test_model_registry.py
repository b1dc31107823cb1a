"""Model presets: create_model / model_config / list_models errors and overrides."""

from __future__ import annotations

import pytest

from attnlab.models import (
    GPT,
    Encoder,
    ModelConfig,
    build_model,
    create_model,
    describe_models,
    list_models,
    model_config,
    register_model,
)
from attnlab.models import registry as registry_module


def error_of(fn) -> str:
    with pytest.raises(ValueError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg, f"error message spans several lines: {msg!r}"
    return msg


def test_presets_are_listed_and_resolve():
    names = list_models()
    assert {"gpt", "gpt-tiny", "gpt-char-small", "gpt-modern", "encoder", "encoder-tiny", "bert"} <= set(names)
    assert names == sorted(names)
    cfg = model_config("gpt-char-small", attention="softmax", dropout=0.1)
    assert (cfg.dim, cfg.num_layers, cfg.num_heads, cfg.max_seq_len, cfg.dropout) == (384, 6, 6, 256, 0.1)
    assert model_config("gpt-modern").position == "rope" and model_config("gpt-modern").bias is False
    rows = {r["name"]: r for r in describe_models()}
    assert rows["gpt-tiny"]["family"] == "GPT" and rows["encoder-tiny"]["family"] == "Encoder"
    assert isinstance(create_model("gpt-tiny", vocab_size=10), GPT)
    assert isinstance(create_model("encoder-tiny", vocab_size=10), Encoder)


def test_generic_gpt_and_encoder_with_the_issue_vocabulary():
    gpt = create_model("gpt", vocab_size=50, dim=32, num_layers=2, num_heads=4, max_seq_len=16, attention="softmax")
    enc = create_model("encoder", vocab_size=50, dim=32, num_layers=2, num_heads=4, max_seq_len=16)
    assert len(gpt.blocks) == 2 and gpt.cfg.max_seq_len == 16 and len(enc.blocks) == 2


def test_unknown_preset_suggests_and_lists():
    msg = error_of(lambda: create_model("gpt-tinny"))
    assert "unknown model 'gpt-tinny'" in msg and "Did you mean" in msg and "'gpt-tiny'" in msg
    assert "'encoder'" in msg


def test_unknown_override_names_the_closest_field():
    msg = error_of(lambda: create_model("gpt-tiny", num_layer=3))
    assert "['num_layer']" in msg and "num_layers" in msg


def test_wrong_type_or_range_names_the_field():
    msg = error_of(lambda: create_model("gpt-tiny", dim="wide"))
    assert "'gpt-tiny'" in msg and "dim" in msg
    msg = error_of(lambda: create_model("gpt-tiny", dropout=1.5))
    assert "dropout" in msg
    msg = error_of(lambda: create_model("gpt-tiny", position="absolute"))
    assert "position" in msg and "'learned'" in msg


def test_config_rejects_unknown_keys_and_bad_assignment():
    with pytest.raises(ValueError, match="extra"):
        ModelConfig(dimm=3)
    cfg = ModelConfig()
    with pytest.raises(ValueError):
        cfg.num_heads = 0


def test_register_model_duplicate_and_broken_presets():
    with pytest.raises(ValueError, match="'gpt-tiny' is already registered"):
        register_model("gpt-tiny", GPT)
    with pytest.raises(ValueError):
        register_model("_test_broken", GPT, dim=30, num_heads=4)  # fails at registration, not later
    assert "_test_broken" not in list_models()
    try:
        register_model("_test_small", GPT, "test preset", dim=16, num_layers=1, num_heads=2)
        assert create_model("_test_small", vocab_size=7).cfg.dim == 16
        model = build_model("_test_small", ModelConfig(vocab_size=7, dim=8, num_layers=1, num_heads=2))
        assert isinstance(model, GPT) and model.cfg.dim == 8
    finally:
        registry_module._MODELS.pop("_test_small", None)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", ModelConfig())
