"""Tiny random Hugging Face checkpoints built at test time with ``transformers`` (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
transformers = pytest.importorskip("transformers")

BERT_KW = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
               max_position_embeddings=64, type_vocab_size=2)
GPT2_KW = dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=None, eos_token_id=None)
VIT_KW = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=16,
              patch_size=4, num_channels=3, num_labels=5)

# (name, transformers class, config class, config kwargs)
CHECKPOINTS = {
    "BertModel": ("BertModel", "BertConfig", BERT_KW),
    "BertModelNoPooler": ("BertModel", "BertConfig", BERT_KW),
    "BertForMaskedLM": ("BertForMaskedLM", "BertConfig", BERT_KW),
    "BertForSequenceClassification": ("BertForSequenceClassification", "BertConfig", {**BERT_KW, "num_labels": 3}),
    "GPT2LMHeadModel": ("GPT2LMHeadModel", "GPT2Config", GPT2_KW),
    "GPT2Model": ("GPT2Model", "GPT2Config", GPT2_KW),
    "ViTModel": ("ViTModel", "ViTConfig", VIT_KW),
    "ViTForImageClassification": ("ViTForImageClassification", "ViTConfig", VIT_KW),
}


def build_hf(name: str):
    """A randomly initialised transformers model in eval mode (non-trivial LayerNorm parameters too)."""
    cls_name, cfg_name, kw = CHECKPOINTS[name]
    torch.manual_seed(sum(name.encode()))  # stable across runs (str hash is randomised)
    cfg = getattr(transformers, cfg_name)(**kw)
    cls = getattr(transformers, cls_name)
    model = cls(cfg, add_pooling_layer=False) if name == "BertModelNoPooler" else cls(cfg)
    with torch.no_grad():  # LayerNorms start at (1, 0): perturb them so a swapped weight/bias would show
        for n, p in model.named_parameters():
            if "LayerNorm" in n or "ln_" in n or "layernorm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """``hf_checkpoint(name) -> (folder, transformers model)``; each checkpoint is saved once per session."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            model = build_hf(name)
            folder = tmp_path_factory.mktemp(name)
            model.save_pretrained(folder)
            cache[name] = (folder, model)
        return cache[name]

    return get
