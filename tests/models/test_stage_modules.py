"""Grid attention modules after the stages of the Swin family and UniFormer (`stage_modules`)."""

from __future__ import annotations

import pytest
import torch

from attnlab.interop import save_pretrained
from attnlab.models import create_model


def _silence(model) -> None:
    """Zero every LKA's last 1x1 convolution: each module then adds exactly 0."""
    with torch.no_grad():
        for stage in model.stages:
            if stage.module is not None:
                stage.module.conv1.weight.zero_(), stage.module.conv1.bias.zero_()


@pytest.mark.parametrize("preset, shape", [("swin-tiny", (2, 3, 32, 32)), ("dinat-tiny", (2, 3, 32, 32)),
                                           ("uniformer-tiny", (2, 3, 32, 32))])
def test_a_module_that_adds_zero_leaves_the_model_unchanged_and_one_that_does_not_changes_it(preset, shape):
    torch.manual_seed(0)
    plain = create_model(preset).eval()
    withm = create_model(preset, stage_modules=["lka", "lka"]).eval()
    missing, unexpected = withm.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".module." in k for k in missing) and missing
    x = torch.randn(*shape)
    with torch.no_grad():
        changed = withm(x)
        _silence(withm)
        torch.testing.assert_close(withm(x), plain(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(changed, plain(x), atol=1e-3)


def test_the_module_runs_on_the_stage_grid_residually():
    torch.manual_seed(1)
    model = create_model("swin-tiny", stage_modules=["", "psa"]).eval()
    stage = model.stages[1]
    assert model.stages[0].module is None and type(stage.module).__name__ == "PolarizedSelfAttention"
    x = torch.randn(2, 64, 32)                                   # 8x8 grid, width 32
    with torch.no_grad():
        h = x
        for block in stage.blocks:
            h = block(h, (8, 8))
        fmap = h.transpose(1, 2).reshape(2, 32, 8, 8)
        want = h + stage.module(fmap).flatten(2).transpose(1, 2)
        torch.testing.assert_close(stage(x, (8, 8)), want)


def test_bad_stage_modules_and_saving_to_transformers(tmp_path):
    with pytest.raises(ValueError, match="one grid attention module per stage"):
        create_model("swin-tiny", stage_modules=["lka"])
    with pytest.raises(ValueError, match="unknown grid attention 'psaa'"):
        create_model("swin-tiny", stage_modules=["psaa", ""])
    with pytest.raises(ValueError, match=r"'lka' has no option\(s\) \['layout'\]"):
        create_model("swin-tiny", stage_modules=["lka", ""], grid_attention_options={"layout": "sequential"})
    model = create_model("swin-tiny", stage_modules=["psa", ""], grid_attention_options={"layout": "sequential"})
    assert model.stages[0].module.layout == "sequential"
    with pytest.raises(ValueError, match="no grid attention modules after its stages"):
        save_pretrained(model, tmp_path / "hf")
