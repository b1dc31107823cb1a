"""save_pretrained -> transformers from_pretrained -> identical outputs; attention swapping on load."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from attnlab.attention import list_attention
from attnlab.interop import load_pretrained, save_pretrained
from attnlab.models import create_model

transformers = pytest.importorskip("transformers")


def _inputs(name: str):
    g = torch.Generator().manual_seed(4)
    if name.startswith("ViT"):
        return dict(pixel_values=torch.randn(2, 3, 16, 16, generator=g))
    return dict(input_ids=torch.randint(0, 99, (2, 9), generator=g))


@pytest.mark.parametrize("name", ["BertModel", "BertModelNoPooler", "BertForMaskedLM", "BertForSequenceClassification",
                                  "GPT2LMHeadModel", "GPT2Model", "ViTModel", "ViTForImageClassification"])
def test_saved_folder_loads_in_transformers_unchanged(hf_checkpoint, tmp_path, name):
    folder, hf = hf_checkpoint(name)
    model = load_pretrained(folder)
    save_pretrained(model, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == hf.config.architectures and config["model_type"] == hf.config.model_type
    reloaded = getattr(transformers, hf.config.architectures[0]).from_pretrained(tmp_path / "out").eval()
    extra = {"use_cache": False} if name.startswith("GPT") else {}  # no KV-cache object in the outputs
    with torch.no_grad():
        a, b = hf(**_inputs(name), **extra), reloaded(**_inputs(name), **extra)
    for key in a.keys():
        assert_close(b[key], a[key], atol=0, rtol=0)  # identical tensors -> identical outputs
    again = load_pretrained(tmp_path / "out")  # and back into attnlab
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_natively_built_gpt_saves_as_gpt2(tmp_path):
    model = create_model("gpt-tiny", vocab_size=50, activation="gelu_tanh").eval()
    save_pretrained(model, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        assert_close(model(ids), hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_unrepresentable_config_names_the_fields(tmp_path):
    model = create_model("gpt-modern", dim=32, num_layers=1, num_heads=4, vocab_size=50)
    with pytest.raises(ValueError, match=r"position='rope'.*norm='rmsnorm'|norm='rmsnorm'.*position='rope'"):
        save_pretrained(model, tmp_path)
    with pytest.raises(ValueError, match="prenorm=True"):
        save_pretrained(create_model("encoder-tiny", vocab_size=50), tmp_path)  # BERT is post-norm
    assert not (tmp_path / "model.safetensors").exists()


SWAP = "sliding_window" if "sliding_window" in list_attention() else "neighborhood"


def test_swap_keeps_every_weight_and_only_changes_the_kernel(hf_checkpoint):
    folder, hf = hf_checkpoint("BertForMaskedLM")
    base = load_pretrained(folder)
    swapped = load_pretrained(folder, attention=SWAP, window=4) if SWAP == "sliding_window" else \
        load_pretrained(folder, attention=SWAP, kernel_size=3)
    assert [b.attn.kernel.name for b in swapped.blocks] == [SWAP] * 2
    assert swapped.hf_info["initialised"] == []  # the kernel owns no parameters: nothing left at init
    for (k1, v1), (k2, v2) in zip(base.state_dict().items(), swapped.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    ids = torch.randint(0, 99, (2, 12))
    with torch.no_grad():
        assert (base.mlm_logits(ids) - swapped.mlm_logits(ids)).abs().max() > 1e-3  # the kernel did change
        wide = load_pretrained(folder, attention=SWAP, **({"window": 64} if SWAP == "sliding_window" else {}))
        assert_close(wide.mlm_logits(ids), base.mlm_logits(ids), atol=1e-5, rtol=1e-5)  # window >= T: exact


def test_swapped_model_is_saved_only_on_request_and_restored(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint("BertModel")
    model = load_pretrained(folder, attention="sliding_window", window=4)
    with pytest.raises(ValueError, match="allow_attention_change"):
        save_pretrained(model, tmp_path)
    save_pretrained(model, tmp_path, allow_attention_change=True)
    again = load_pretrained(tmp_path)
    assert again.cfg.attention == "sliding_window" and again.cfg.attention_options == {"window": 4}
    assert transformers.BertModel.from_pretrained(tmp_path) is not None  # still a valid BERT folder


def test_swap_with_unknown_option_lists_valid_ones(hf_checkpoint):
    with pytest.raises(ValueError, match="window"):
        load_pretrained(hf_checkpoint("BertModel")[0], attention="sliding_window", windo=4)


def test_attention_options_without_a_kernel_are_an_error(hf_checkpoint):
    with pytest.raises(ValueError, match=r"\['window'\] need attention="):
        load_pretrained(hf_checkpoint("BertModel")[0], window=4)
