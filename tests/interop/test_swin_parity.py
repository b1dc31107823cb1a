"""Swin parity with Hugging Face transformers on random tiny checkpoints made at test time: hidden states and logits
for grids that are multiples of the window and grids that are not (padding as transformers does), the save round
trip, and swapping the attention on load."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnlab.interop.swin import load_swin, save_swin  # noqa: E402
from attnlab.models import create_model  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-4)


def _hf_swin(tmp_path, image_size=32, classifier=True, seed=0, embed_dim=16):
    """A random tiny Swin saved by transformers; every parameter randomised (transformers zeroes the bias tables).
    Heads of ``embed_dim / 2`` channels: 8 by default, 16 and up where the native fp32 window kernel runs."""
    cfg = transformers.SwinConfig(image_size=image_size, patch_size=2, num_channels=3, embed_dim=embed_dim,
                                  depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=5)
    torch.manual_seed(seed)
    model = (transformers.SwinForImageClassification if classifier else transformers.SwinModel)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 and p.shape[0] in (16, 32, 64, 128) else 0.0))
    folder = tmp_path / f"hf-{image_size}-{classifier}-{embed_dim}"
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("image_size", [32, 36, 34])  # 16x16 grid; 18x18 (padded to 20, then 9x9 -> 12); 17x17 (odd merge)
def test_hidden_states_and_logits_match_transformers(tmp_path, image_size):
    hf, folder = _hf_swin(tmp_path, image_size)
    ours = load_swin(folder)
    x = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        hidden = ours(x)
        torch.testing.assert_close(hidden, hf.swin.layernorm(ref.hidden_states[-1]), **TOL)
        torch.testing.assert_close(ours.classify(x), ref.logits, **TOL)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("image_size", [32, 36])
def test_the_native_window_kernel_matches_transformers_with_gradients(tmp_path, monkeypatch, image_size):
    """Heads of 16 channels take attnlab's native fp32 window kernel (where the CPU has AVX-512): logits equal
    transformers', and every parameter's gradient equals transformers' own, bias tables included."""
    from attnlab.native import window_fp32
    from native_cpu import family_runs

    hf, folder = _hf_swin(tmp_path, image_size, embed_dim=32)
    ours = load_swin(folder)
    calls, op = [], window_fp32.attend_windows_fp32_op
    monkeypatch.setattr(window_fp32, "attend_windows_fp32_op", lambda *a: calls.append(1) or op(*a))
    x, y = torch.randn(2, 3, image_size, image_size), torch.tensor([1, 4])
    with torch.no_grad():
        torch.testing.assert_close(ours.classify(x), hf(pixel_values=x).logits, **TOL)
    assert len(calls) == (4 if family_runs("attention_fp32") else 0)
    # gradients in eval mode: the checkpoint's stochastic depth (drop_path_rate 0.1) stays off in both
    torch.nn.functional.cross_entropy(ours.classify(x), y).backward()
    torch.nn.functional.cross_entropy(hf(pixel_values=x).logits, y).backward()
    table = lambda m: [b.attn.kernel.rel_bias for s in m.stages for b in s.blocks]  # noqa: E731
    hf_table = [p for name, p in hf.named_parameters() if name.endswith("relative_position_bias_table")]
    assert len(hf_table) == len(table(ours)) == 4
    for a, b in zip(table(ours), hf_table):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-3)
    torch.testing.assert_close(ours.head.weight.grad, hf.classifier.weight.grad, atol=1e-5, rtol=1e-3)


def test_a_backbone_without_head_loads_too(tmp_path):
    hf, folder = _hf_swin(tmp_path, classifier=False)
    ours = load_swin(folder)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.pooled(x), hf(pixel_values=x).pooler_output, **TOL)
    assert ours.head is None


def test_save_round_trip_loads_in_transformers(tmp_path):
    torch.manual_seed(3)
    ours = create_model("swin-tiny", num_classes=4).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = save_swin(ours, tmp_path / "out")
    hf, info = transformers.SwinForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(pixel_values=x).logits, ours.classify(x), **TOL)


def test_swapping_the_attention_on_load(tmp_path):
    _, folder = _hf_swin(tmp_path)
    swapped = load_swin(folder, attention="neighborhood", kernel_size=3)
    assert {type(b.attn.kernel).__name__ for s in swapped.stages for b in s.blocks} == {"NeighborhoodAttention"}
    assert len(swapped.hf_info["skipped"]) == 4  # the four blocks' bias tables
    assert torch.isfinite(swapped.classify(torch.randn(1, 3, 32, 32))).all()
    with pytest.raises(ValueError, match="transformers' Swin runs window attention only; this model uses "
                                         r"\['neighborhood'\]. Pass allow_attention_change=True"):
        save_swin(swapped, tmp_path / "no")


def _hf_param(model, stem: str, leaves: tuple[str, ...]) -> torch.Tensor:
    """A parameter of transformers' Swin under its v4 or v5 module name."""
    params = dict(model.named_parameters())
    return next(p for name, p in params.items() if any(name.endswith(stem + leaf) for leaf in leaves))


@pytest.mark.parametrize("attention, own", [("linear", "dwc.weight"), ("gpsa", "pos_proj.weight"),
                                            ("routing", "centroids")])  # a buffer: state, not a weight
def test_a_kernel_with_its_own_weights_loads_them_initialised(tmp_path, attention, own):
    """The checkpoint's projections land as with any kernel; the kernel's own weights are new, and listed."""
    import attnlab

    hf, folder = _hf_swin(tmp_path)
    swapped = attnlab.load_pretrained(folder, attention=attention)
    assert f"stages.1.blocks.1.attn.kernel.{own}" in swapped.hf_info["initialised"]
    assert not any("kernel" not in k for k in swapped.hf_info["initialised"])
    query = _hf_param(hf, "layers.1.blocks.1.attention.", ("self.query.weight", "q_proj.weight"))
    torch.testing.assert_close(swapped.stages[1].blocks[1].attn.q_proj.weight, query, atol=0, rtol=0)
    with pytest.raises(ValueError, match=f"attention \\['{attention}'\\] has its own parameters or state"):
        attnlab.save_pretrained(swapped, tmp_path / "no", allow_attention_change=True)


def test_a_swapped_swin_saves_with_allow_attention_change_and_comes_back(tmp_path):
    """transformers loads the folder (window attention, zero bias tables where the kernel has none); attnlab's
    load_pretrained restores the per-stage kernels recorded in config.json, with identical logits."""
    import attnlab

    _, folder = _hf_swin(tmp_path)
    swapped = attnlab.load_pretrained(folder, attention=["neighborhood", "window"],
                                      attention_options=[{"kernel_size": 3}, {}])
    assert swapped.cfg.attention == ["neighborhood"] * 2 + ["window"] * 2
    assert len(swapped.hf_info["skipped"]) == 2  # stage 0's tables; stage 1 keeps its own
    out = attnlab.save_pretrained(swapped, tmp_path / "swapped", allow_attention_change=True)
    back = attnlab.load_pretrained(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back.classify(x), swapped.classify(x), atol=0, rtol=0)
    hf, info = transformers.SwinForImageClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tables = ("self.relative_position_bias_table", "relative_position_bias.relative_position_bias_table")
    zero = _hf_param(hf, "layers.0.blocks.1.attention.", tables)
    kept = _hf_param(hf, "layers.1.blocks.1.attention.", tables)
    assert zero.abs().max() == 0
    torch.testing.assert_close(kept, swapped.stages[1].blocks[1].attn.kernel.rel_bias, atol=0, rtol=0)


def test_a_new_head_and_image_size_on_load(tmp_path):
    """num_classes builds an initialised head in place of the checkpoint's; image_size sets the input size, and
    the body's features still match transformers' on that size (Swin has no position embedding)."""
    import attnlab

    hf, folder = _hf_swin(tmp_path)
    model = attnlab.load_pretrained(folder, num_classes=3, image_size=40)
    assert model.head.weight.shape == (3, 16 * 2) and model.hf_info["initialised"] == ["head.weight", "head.bias"]
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model.pooled(x), hf.swin(pixel_values=x).pooler_output, **TOL)
    assert attnlab.load_pretrained(folder, num_classes=0).head is None
    with pytest.raises(ValueError, match=r"image_size=12 makes stage 1's grid \(3, 3\) smaller than the 4x4 windows "
                                         r"the checkpoint's bias tables were trained for; use image_size >= 16"):
        attnlab.load_pretrained(folder, image_size=12)
    same = attnlab.load_pretrained(folder, num_classes=5)  # the checkpoint's own count: its trained head stays
    assert same.hf_info["initialised"] == [] and torch.equal(same.head.weight, hf.classifier.weight)
    with pytest.raises(ValueError, match=r"transformers' Swin cannot run stage\(s\) \[1\], whose grids \[\(4, 4\)\] "
                                         r"are smaller than window_size=7"):
        save_swin(create_model("swin-tiny", image_size=16, window_size=7),
                  tmp_path / "small")
    with pytest.raises(ValueError, match=r"\['kv_stride'\] cannot be set when loading a swin checkpoint; a swin "
                                         r"checkpoint takes \['image_size', 'num_classes'\]"):
        attnlab.load_pretrained(folder, kv_stride=1)


def test_unsupported_configs_are_named(tmp_path):
    _, folder = _hf_swin(tmp_path)
    cfg = (folder / "config.json").read_text().replace('"use_absolute_embeddings": false',
                                                      '"use_absolute_embeddings": true')
    (folder / "config.json").write_text(cfg)
    with pytest.raises(ValueError, match="use_absolute_embeddings=True, which attnlab's Swin does not implement"):
        load_swin(folder)


def test_load_and_save_pretrained_dispatch_swin(tmp_path):
    import attnlab

    hf, folder = _hf_swin(tmp_path)
    model = attnlab.load_pretrained(folder)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.classify(x), hf(pixel_values=x).logits, **TOL)
    again = attnlab.load_pretrained(attnlab.save_pretrained(model, tmp_path / "again"))
    with torch.no_grad():
        torch.testing.assert_close(again.classify(x), model.classify(x), atol=0, rtol=0)
