"""attnlab vs transformers on tiny random checkpoints: full hidden states and logits within 1e-5 (fp32)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from attnlab.attention import CapabilityError
from attnlab.interop import load_pretrained
from attnlab.models import GPT, Encoder
from attnlab.models.vision.vit import ViT

TOL = dict(atol=1e-5, rtol=1e-5)


def _text_batch(vocab: int = 99):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 7:] = False  # right padding
    mask[2, 3:] = False
    return ids, mask


@pytest.mark.parametrize("name", ["BertModel", "BertModelNoPooler", "BertForMaskedLM", "BertForSequenceClassification"])
def test_bert_hidden_states_and_logits(hf_checkpoint, name):
    folder, hf = hf_checkpoint(name)
    model = load_pretrained(folder)
    assert isinstance(model, Encoder) and model.hf_info["architecture"] == hf.config.architectures[0]
    ids, mask = _text_batch()
    types = torch.randint(0, 2, ids.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long(), token_type_ids=types, output_hidden_states=True)
        hidden = model(ids, mask, token_type_ids=types)
        assert_close(hidden, ref.hidden_states[-1], **TOL)  # every position, pads included
        if name == "BertModel":
            assert_close(model.pooler(hidden), ref.pooler_output, **TOL)
        if name == "BertForMaskedLM":
            assert_close(model.mlm_logits(ids, mask, token_type_ids=types), ref.logits, **TOL)
        if name == "BertForSequenceClassification":
            assert_close(model.classify(ids, mask, token_type_ids=types), ref.logits, **TOL)
    assert (hasattr(model, "pooler")) == (name in ("BertModel",))


def test_bert_without_mlm_head_says_so(hf_checkpoint):
    model = load_pretrained(hf_checkpoint("BertModel")[0])
    with pytest.raises(ValueError, match="no masked-LM head"):
        model.mlm_logits(torch.zeros(1, 3, dtype=torch.long))


@pytest.mark.parametrize("name", ["GPT2LMHeadModel", "GPT2Model"])
def test_gpt2_hidden_states_and_logits(hf_checkpoint, name):
    folder, hf = hf_checkpoint(name)
    model = load_pretrained(folder)
    assert isinstance(model, GPT) and model.cfg.activation == "gelu_tanh" and model.cfg.prenorm
    ids, mask = _text_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        hidden = model.encode(ids, key_padding_mask=mask)
        assert_close(hidden, ref.hidden_states[-1], **TOL)
        if name == "GPT2LMHeadModel":
            assert_close(model(ids, key_padding_mask=mask), ref.logits, **TOL)
            assert model.head.weight is model.embed.tok_emb.weight  # tied, as in the checkpoint


@pytest.mark.parametrize("name", ["ViTModel", "ViTForImageClassification"])
def test_vit_hidden_states_and_logits(hf_checkpoint, name):
    folder, hf = hf_checkpoint(name)
    model = load_pretrained(folder)
    assert isinstance(model, ViT) and model.grid == (4, 4)
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(pixel_values=pixels, output_hidden_states=True)
        hidden = model(pixels)
        assert hidden.shape == (2, 17, 32)  # [CLS] + 4x4 patches
        base = hf if name == "ViTModel" else hf.vit  # hidden_states[-1] is before the final LayerNorm
        assert_close(hidden, base(pixel_values=pixels).last_hidden_state, **TOL)
        if name == "ViTModel":
            assert_close(model.pooler(hidden), ref.pooler_output, **TOL)
        else:
            assert_close(model.classify(pixels), ref.logits, **TOL)


def test_vit_with_mean_pooling_drops_the_class_token_and_takes_grid_kernels(hf_checkpoint):
    """pooling='mean' leaves out the [CLS] token and its position: with softmax, the result equals transformers'
    own layers run on the patch tokens alone (their embeddings plus positions 1..N), layer-normed, mean-pooled,
    through the checkpoint's classifier; a grid kernel then serves every block."""
    folder, hf = hf_checkpoint("ViTForImageClassification")
    model = load_pretrained(folder, pooling="mean")
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        emb = hf.vit.embeddings
        x = emb.patch_embeddings(pixels) + emb.position_embeddings[:, 1:]
        layers = hf.vit.layers if hasattr(hf.vit, "layers") else hf.vit.encoder.layer  # transformers 5 / 4
        for layer in layers:
            out = layer(x)
            x = out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple, 5 the tensor
        ref = hf.classifier(hf.vit.layernorm(x).mean(dim=1))
        assert_close(model.classify(pixels), ref, **TOL)
    assert "embeddings.cls_token" in model.hf_info["skipped"] and model.embed.cls_token is None
    grid = load_pretrained(folder, attention="neighborhood", kernel_size=3, pooling="mean")
    assert grid.blocks[0].attn.kernel.name == "neighborhood" and torch.isfinite(grid.classify(pixels)).all()
    with pytest.raises(CapabilityError, match="pass pooling='mean' to load_pretrained"):
        load_pretrained(folder, attention="neighborhood")


def test_legacy_pytorch_model_bin_loads(hf_checkpoint, tmp_path):
    folder, hf = hf_checkpoint("BertForMaskedLM")
    hf.save_pretrained(tmp_path, safe_serialization=False) if _can_save_bin(hf) else torch.save(
        hf.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    model = load_pretrained(tmp_path)
    ids, mask = _text_batch()
    with torch.no_grad():
        assert_close(model.mlm_logits(ids, mask), hf(input_ids=ids, attention_mask=mask.long()).logits, **TOL)


def _can_save_bin(hf) -> bool:
    import inspect

    return "safe_serialization" in inspect.signature(hf.save_pretrained).parameters


def test_bf16_dtype_and_checkpoint_position_ids_buffer(hf_checkpoint, tmp_path):
    """Old checkpoints carry ``embeddings.position_ids`` (a buffer, not a weight): accepted and ignored."""
    from safetensors.torch import load_file, save_file

    folder, hf = hf_checkpoint("BertModel")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["embeddings.position_ids"] = torch.arange(64)[None]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    model = load_pretrained(tmp_path, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    ids, mask = _text_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        assert_close(model(ids, mask).float(), ref, atol=0.1, rtol=0.05)
