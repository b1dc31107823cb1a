"""AST parity with transformers on random tiny checkpoints made at test time: hidden states, pooled output and logits;
ASTModel folders; the save round trip; attention swap on load; clear errors."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnlab  # noqa: E402
from attnlab.attention.capabilities import CapabilityError  # noqa: E402
from attnlab.interop.ast import load_ast, save_ast  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-4)
CFG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=8,
           frequency_stride=6, time_stride=5, max_length=40, num_mel_bins=32, hidden_dropout_prob=0.0,
           attention_probs_dropout_prob=0.0, num_labels=7)


def _checkpoint(tmp_path, base: bool = False):
    torch.manual_seed(0)
    hf = transformers.ASTForAudioClassification(transformers.ASTConfig(**CFG)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    folder = tmp_path / ("base" if base else "cls")
    (hf.audio_spectrogram_transformer if base else hf).save_pretrained(folder)
    return hf, folder


def test_hidden_states_pooled_output_and_logits_match(tmp_path):
    hf, folder = _checkpoint(tmp_path)
    ours = attnlab.load_pretrained(folder)
    spec = torch.randn(3, 40, 32)
    with torch.no_grad():
        ref = hf.audio_spectrogram_transformer(spec)
        torch.testing.assert_close(ours(spec), ref.last_hidden_state, **TOL)
        torch.testing.assert_close(ours.pooled(spec), ref.pooler_output, **TOL)
        torch.testing.assert_close(ours.classify(spec), hf(spec).logits, **TOL)
    assert ours.grid == (5, 7) and sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def test_ast_model_folder_and_save_round_trip(tmp_path):
    hf, folder = _checkpoint(tmp_path, base=True)
    ours = load_ast(folder)
    assert ours.head is None
    spec = torch.randn(2, 40, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(spec), hf.audio_spectrogram_transformer(spec).last_hidden_state, **TOL)
    _, cls_folder = _checkpoint(tmp_path)
    full = load_ast(cls_folder)
    back, info = transformers.ASTForAudioClassification.from_pretrained(save_ast(full, tmp_path / "out"),
                                                                        output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(spec).logits, full.classify(spec), **TOL)
    again = attnlab.load_pretrained(attnlab.save_pretrained(full, tmp_path / "again"))
    with torch.no_grad():
        assert torch.equal(again.classify(spec), full.classify(spec))


def test_attention_swap_on_load_and_errors(tmp_path):
    _, folder = _checkpoint(tmp_path)
    assert load_ast(folder, attention="linear").blocks[0].attn.kernel.name == "linear"
    with pytest.raises(CapabilityError, match="pooling='mean'"):
        load_ast(folder, attention="neighborhood", kernel_size=3)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "qkv_bias": False}))
    with pytest.raises(ValueError, match="qkv_bias=False"):
        load_ast(folder)
    with pytest.raises(ValueError, match="pooling='mean'"):
        save_ast(attnlab.models.create_model("ast-tiny", pooling="mean", max_seq_len=50), tmp_path / "no")
    with pytest.raises(ValueError, match=r"patch_shape \[32, 2\] \(its patches are square\)"):
        save_ast(attnlab.models.create_model("ast-tiny", patch_shape=[32, 2], patch_stride=None), tmp_path / "frames")
