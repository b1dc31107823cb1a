"""Encoder: padding, pooling, heads, BERT layout, attention maps."""

from __future__ import annotations

import pytest
import torch

from attnlab.models import create_model, pool

V = 31


def tiny(**overrides):
    torch.manual_seed(0)
    return create_model("encoder-tiny", vocab_size=V, **overrides).eval()


def test_padding_changes_nothing_at_valid_positions():
    model = tiny(position="relative")
    ids = torch.randint(0, V, (2, 9))
    kpm = torch.ones(2, 9, dtype=torch.bool)
    kpm[0, 6:] = False
    with torch.no_grad():
        h = model(ids, kpm)
        h2 = model(torch.where(kpm, ids, (ids + 3) % V), kpm)
        alone = model(ids[:1, :6])  # the same sentence without padding
    assert h.shape == (2, 9, 64)
    torch.testing.assert_close(h2[kpm], h[kpm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h[0, :6], alone[0], atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # without the mask the pad tokens do leak
        assert not torch.allclose(model(ids)[0, :6], h[0, :6], atol=1e-4)


def test_pooling_formulas():
    h = torch.randn(2, 5, 3)
    kpm = torch.tensor([[True] * 5, [True, True, False, False, False]])
    torch.testing.assert_close(pool(h, kpm, "mean"), torch.stack([h[0].mean(0), h[1, :2].mean(0)]))
    torch.testing.assert_close(pool(h, None, "mean"), h.mean(1))
    torch.testing.assert_close(pool(h, kpm, "cls"), h[:, 0])
    with pytest.raises(ValueError, match=r"unknown pooling 'max'; valid: \['cls', 'mean'\]"):
        pool(h, kpm, "max")


def test_heads_and_pooled_embeddings():
    model = tiny(num_classes=3, pooling="mean")
    ids = torch.randint(0, V, (2, 7))
    kpm = torch.ones(2, 7, dtype=torch.bool)
    kpm[1, 4:] = False
    with torch.no_grad():
        h = model(ids, kpm)
        emb = model.embed_pooled(ids, kpm)
        torch.testing.assert_close(emb, pool(h, kpm, "mean"))
        logits = model.classify(ids, kpm)
        torch.testing.assert_close(logits, model.classifier.out(emb))
        assert logits.shape == (2, 3)
        assert model.mlm_logits(ids, kpm).shape == (2, 7, V)
    assert model.mlm_head.decoder.weight is model.embed.tok_emb.weight  # tied by default
    with pytest.raises(ValueError, match="num_classes=<number of labels>"):
        tiny().classify(ids)


def test_bert_layout_preset():
    model = create_model("bert", vocab_size=V, dim=32, num_layers=2, num_heads=4, max_seq_len=16).eval()
    assert model.cfg.prenorm is False and model.cfg.norm_eps == 1e-12 and model.cfg.pooling == "cls"
    assert type(model.blocks[0]).__name__ == "PostNormBlock" and isinstance(model.final_norm, torch.nn.Identity)
    assert model.embed.embed_norm is not None and model.embed.type_emb.num_embeddings == 2
    ids = torch.randint(0, V, (1, 6))
    with torch.no_grad():
        a = model(ids)
        b = model(ids, token_type_ids=torch.tensor([[0, 0, 0, 1, 1, 1]]))
        torch.testing.assert_close(a, model(ids, token_type_ids=torch.zeros(1, 6, dtype=torch.long)))
    assert not torch.allclose(a[0, 3:], b[0, 3:], atol=1e-4)
    # post-norm: every block output is LayerNorm-ed (mean 0, std 1 per token before the affine)
    torch.testing.assert_close(a.mean(-1), torch.zeros(1, 6), atol=1e-5, rtol=0)


def test_encoder_attention_maps_respect_padding():
    model = tiny(num_layers=2)
    ids = torch.randint(0, V, (2, 6))
    kpm = torch.ones(2, 6, dtype=torch.bool)
    kpm[1, 4:] = False
    maps = model.attention_maps(ids, key_padding_mask=kpm)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 6, 6)
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 4, 6))
        assert m[1, :, :, 4:].abs().max() == 0 and m[0].triu(1).abs().max() > 0  # bidirectional
