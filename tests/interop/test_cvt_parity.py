"""CvT parity with Hugging Face transformers on random tiny checkpoints made at test time (every weight and every
BatchNorm running statistic randomised, so a swapped mean/variance is caught): hidden states and logits with and
without the last stage's class token, on even and odd grids; the save round trip; swapping the attention on load;
unsupported configs named."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnlab.attention.capabilities import CapabilityError  # noqa: E402
from attnlab.interop.cvt import cvt_config, load_cvt, save_cvt  # noqa: E402
from attnlab.interop.pretrained import load_pretrained, save_pretrained  # noqa: E402
from attnlab.models import create_model  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-4)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                noise = torch.randn(t.shape, generator=g) * 0.2
                t.copy_(noise.abs() + 0.5 if "running_var" in name else noise + (1.0 if name.endswith(
                    ("normalization.weight", "layernorm_before.weight", "layernorm_after.weight")) else 0.0))


def _hf_cvt(tmp_path, cls_token=True, classifier=True, seed=0):
    cfg = transformers.CvtConfig(num_channels=3, patch_sizes=[7, 3], patch_stride=[4, 2], patch_padding=[2, 1],
                                 embed_dim=[16, 24], num_heads=[1, 3], depth=[1, 2], mlp_ratio=[4.0, 4.0],
                                 attention_drop_rate=[0.0, 0.0], drop_rate=[0.0, 0.0], drop_path_rate=[0.0, 0.0],
                                 qkv_bias=[True, True], cls_token=[False, cls_token],
                                 qkv_projection_method=["dw_bn", "dw_bn"], kernel_qkv=[3, 3], padding_kv=[1, 1],
                                 stride_kv=[2, 2], padding_q=[1, 1], stride_q=[1, 1], num_labels=5)
    torch.manual_seed(seed)
    model = (transformers.CvtForImageClassification if classifier else transformers.CvtModel)(cfg).eval()
    _randomise(model, seed)
    folder = tmp_path / f"hf-{cls_token}-{classifier}"
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("cls_token", [True, False])
@pytest.mark.parametrize("image_size", [32, 30, 27])  # grids 8 -> 4 (keys 4, 2); 8 -> 4; 7 -> 4 (odd: keys 4, 2)
def test_hidden_states_and_logits_match_transformers(tmp_path, cls_token, image_size):
    hf, folder = _hf_cvt(tmp_path, cls_token)
    ours = load_cvt(folder, image_size=image_size)
    x = torch.randn(3, 3, image_size, image_size)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        last = ref.hidden_states[-1].flatten(2).transpose(1, 2)  # (B, rows * cols, C)
        hidden = ours(x)
        if cls_token:
            cls = hf.cvt(pixel_values=x).cls_token_value
            torch.testing.assert_close(hidden[:, :1], hf.layernorm(cls), **TOL)
            hidden = hidden[:, 1:]
        torch.testing.assert_close(hidden, hf.layernorm(last), **TOL)
        torch.testing.assert_close(ours.classify(x), ref.logits, **TOL)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def test_backbone_without_head_loads_without_a_final_norm(tmp_path):
    hf, folder = _hf_cvt(tmp_path, cls_token=False, classifier=False)
    ours = load_pretrained(folder)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state.flatten(2).transpose(1, 2)
        torch.testing.assert_close(ours(x), ref, **TOL)
    assert ours.head is None and isinstance(ours.norm, torch.nn.Identity)
    again = load_cvt(save_cvt(ours, tmp_path / "again"))
    torch.testing.assert_close(again(x[:1]), ours(x[:1]), atol=0, rtol=0)


def test_the_official_smallest_preset_matches_transformers_default_config():
    ours = create_model("cvt-13")
    hf = transformers.CvtForImageClassification(transformers.CvtConfig(num_labels=1000))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters()) == 19_997_480


@pytest.mark.parametrize("cls", ["cls", "mean"])
def test_save_round_trip_loads_in_transformers(tmp_path, cls):
    torch.manual_seed(3)
    ours = create_model("cvt-tiny", num_classes=4, pooling=cls, depths=[1, 2]).eval()
    _randomise(ours, 4)
    folder = save_pretrained(ours, tmp_path / "out")
    hf, info = transformers.CvtForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        # output_hidden_states: without a class token transformers' classifier reads outputs[1], which only exists then
        ref = hf.eval()(pixel_values=x, output_hidden_states=True).logits
        torch.testing.assert_close(ref, ours.classify(x), **TOL)
        again = load_cvt(folder, image_size=32)
        torch.testing.assert_close(again.classify(x), ours.classify(x), atol=0, rtol=0)


def test_swapping_the_attention_on_load(tmp_path):
    hf, folder = _hf_cvt(tmp_path, cls_token=False)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(CapabilityError, match="kernels that can: .*softmax.*kv_stride=1"):
        load_cvt(folder, attention="neighborhood", image_size=32)
    swapped = load_pretrained(folder, attention="pathways")  # a cross-attention kernel: same weights, runs
    assert swapped.cfg.attention == "pathways"
    with torch.no_grad():
        assert torch.isfinite(load_cvt(folder, attention="pathways", image_size=32).classify(x)).all()


def test_kv_stride_and_per_stage_kernels_through_load_pretrained_and_back(tmp_path):
    """kv_stride=1 with a grid kernel in the first stage and softmax beside the class token: the convolutional
    projections keep the checkpoint's weights; saved with allow_attention_change, transformers loads it and
    load_pretrained restores the schedule with identical logits."""
    hf, folder = _hf_cvt(tmp_path)
    swapped = load_pretrained(folder, image_size=32, kv_stride=1, attention=["neighborhood", "softmax"],
                              attention_options=[{"kernel_size": 3}, {}])
    assert swapped.cfg.kv_stride == 1 and swapped.cfg.attention == ["neighborhood", "softmax", "softmax"]
    conv = swapped.stages[1].blocks[0].attn.conv_k.conv.weight
    torch.testing.assert_close(conv, dict(hf.named_parameters())[
        "cvt.encoder.stages.1.layers.0.attention.attention.convolution_projection_key.convolution_projection."
        "convolution.weight"], atol=0, rtol=0)
    out = save_pretrained(swapped, tmp_path / "swapped", allow_attention_change=True)
    back = load_pretrained(out)  # the image size it was built for is recorded too
    assert back.cfg.image_size == 32 and back.hf_info["skipped"] == []
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back.classify(x), swapped.classify(x), atol=0, rtol=0)
    again, info = transformers.CvtForImageClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and again.config.stride_kv == [1, 1]


def test_a_new_head_on_load(tmp_path):
    hf, folder = _hf_cvt(tmp_path)
    model = load_pretrained(folder, image_size=32, num_classes=2)
    assert model.head.weight.shape == (2, 24) and model.hf_info["initialised"] == ["head.weight", "head.bias"]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.pooled(x), hf.layernorm(hf.cvt(pixel_values=x).cls_token_value[:, 0]), **TOL)


def test_save_refuses_what_transformers_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="softmax attention only; this model uses .*allow_attention_change=True"):
        save_cvt(create_model("cvt-tiny", kv_stride=1, attention="neighborhood"), tmp_path / "a")
    with pytest.raises(ValueError, match="no final LayerNorm"):
        save_cvt(create_model("cvt-tiny", num_classes=0, depths=[1, 2]), tmp_path / "b")
    with pytest.raises(ValueError, match=r"cannot build stage\(s\) \[1\] of depths=\[1, 1\]"):
        save_cvt(create_model("cvt-tiny"), tmp_path / "c")


@pytest.mark.parametrize("field, value, match", [
    ("qkv_projection_method", ["avg", "dw_bn"], "qkv_projection_method"),
    ("stride_kv", [1, 2], "one value for every stage"),
    ("cls_token", [True, True], "last stage only"),
])
def test_unsupported_configs_are_named(field, value, match):
    hf = dict(transformers.CvtConfig(depth=[1, 2], embed_dim=[16, 24], num_heads=[1, 3], patch_sizes=[7, 3],
                                     patch_stride=[4, 2], patch_padding=[2, 1]).to_dict())
    hf[field] = value
    with pytest.raises(ValueError, match=match):
        cvt_config(hf)
