"""GPT: bad input errors, schedules, weight tying, attention maps, masks, blocks and initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnlab.attention import AttentionContext
from attnlab.models import Block, PostNormBlock, create_model

V = 29


def tiny(**overrides):
    torch.manual_seed(0)
    return create_model("gpt-tiny", vocab_size=V, **overrides)


def error_of(fn) -> str:
    with pytest.raises(ValueError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg, f"error message spans several lines: {msg!r}"
    assert "Value error," not in msg, f"pydantic noise in the message: {msg!r}"
    return msg


def test_unknown_attention_name_lists_valid_names():
    msg = error_of(lambda: tiny(attention="sofmax"))
    assert "unknown attention 'sofmax'. Did you mean ['softmax']?" in msg and "Valid attention kernels" in msg


def test_a_british_spelling_gets_a_did_you_mean():
    msg = error_of(lambda: tiny(attention="neighbourhood"))
    assert "Did you mean ['neighborhood']" in msg


def test_heads_not_divisible_by_kv_heads():
    msg = error_of(lambda: tiny(num_heads=4, num_kv_heads=3))
    assert "num_heads=4" in msg and "num_kv_heads=3" in msg and "[1, 2, 4]" in msg


def test_dim_not_divisible_by_heads():
    msg = error_of(lambda: tiny(dim=30, num_heads=4))
    assert "dim=30" in msg and "num_heads=4" in msg and "head_dim" in msg
    assert tiny(dim=30, num_heads=4, head_dim=8).blocks[0].attn.head_dim == 8  # the suggested fix works


def test_input_longer_than_max_seq_len():
    model = tiny(max_seq_len=8)
    msg = error_of(lambda: model(torch.zeros(1, 9, dtype=torch.long)))
    assert "9 tokens" in msg and "max_seq_len=8" in msg and "truncate" in msg
    msg = error_of(lambda: model(torch.zeros(1, 4, dtype=torch.long), positions=torch.tensor([0, 1, 2, 8])))
    assert "position 8" in msg and "max_seq_len=8" in msg
    cache = model.new_cache(1)
    model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
    assert "10 tokens" in error_of(lambda: model(torch.zeros(1, 4, dtype=torch.long), cache=cache))


def test_other_input_errors():
    model = tiny()
    assert "vocab_size=29" in error_of(lambda: model(torch.tensor([[1, 29]])))
    assert "(batch, tokens)" in error_of(lambda: model(torch.zeros(5, dtype=torch.long)))


def test_per_layer_attention_schedule():
    model = tiny(num_layers=3, attention=["softmax"] * 3,
                 attention_options=[{"dropout": 0.1}, {}, {"scale": 0.5}])
    kernels = [b.attn.kernel for b in model.blocks]
    assert [k.name for k in kernels] == ["softmax"] * 3
    assert [k.dropout for k in kernels] == [0.1, 0.0, 0.0] and kernels[2].scale == 0.5
    msg = error_of(lambda: tiny(num_layers=2, attention=["softmax"] * 3))
    assert "3 entries" in msg and "num_layers=2" in msg
    msg = error_of(lambda: tiny(num_layers=2, attention_options=[{}]))
    assert "1 entries" in msg and "num_layers=2" in msg
    msg = error_of(lambda: tiny(num_layers=2, attention=["softmax", "softmax"], attention_options=[{}, {"windw": 2}]))
    assert "['windw']" in msg and "dropout" in msg


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "alibi", "relative"])
def test_every_parameter_learns(position):
    model = tiny(position=position, tie_weights=False)
    ids = torch.randint(0, V, (2, 9))
    kpm = torch.ones(2, 9, dtype=torch.bool)
    kpm[1, :2] = False
    model(ids, key_padding_mask=kpm).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name != "blocks.0.attn.k_proj.bias" and name != "blocks.1.attn.k_proj.bias":  # softmax shift-invariance
            assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_weight_tying():
    tied, untied = tiny(), tiny(tie_weights=False)
    assert tied.head.weight is tied.embed.tok_emb.weight
    assert untied.head.weight is not untied.embed.tok_emb.weight
    assert untied.num_parameters() - tied.num_parameters() == V * 64
    logits = tied(torch.randint(0, V, (2, 5)))
    logits.sum().backward()
    assert tied.embed.tok_emb.weight.grad.abs().sum() > 0
    # the tied head really is the embedding: logits = h @ E^T
    h = tied.encode(torch.tensor([[3, 4]]))
    torch.testing.assert_close(tied(torch.tensor([[3, 4]])), h @ tied.embed.tok_emb.weight.T)


def test_attention_maps_sum_to_one_are_causal_and_exact():
    model = tiny(num_layers=3, num_kv_heads=2).eval()
    ids = torch.randint(0, V, (2, 7))
    maps = model.attention_maps(ids)
    assert len(maps) == 3
    for m in maps:
        assert m.shape == (2, 4, 7, 7)
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 4, 7))
        assert m.triu(1).abs().max() == 0
    # layer 0 by hand: embeddings -> norm -> q, k (GQA: repeat_interleave) -> causal softmax
    attn = model.blocks[0].attn
    with torch.no_grad():
        x = model.blocks[0].attn_norm(model.embed(ids, torch.arange(7)))
        q = attn.q_proj(x).view(2, 7, 4, 16).transpose(1, 2)  # (B, H, T, Dh)
        k = attn.k_proj(x).view(2, 7, 2, 16).transpose(1, 2).repeat_interleave(2, dim=1)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(16)).masked_fill(torch.ones(7, 7).triu(1).bool(), -math.inf)
    torch.testing.assert_close(maps[0], scores.softmax(-1), atol=1e-5, rtol=1e-4)


def test_packed_documents_and_padding_in_gpt():
    model = tiny().eval()
    ids = torch.randint(0, V, (1, 10))
    docs = torch.tensor([[0] * 4 + [1] * 6])
    with torch.no_grad():
        packed = model(ids, document_ids=docs, positions=torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 4, 5]))
        alone = model(ids[:, 4:])
        torch.testing.assert_close(packed[:, 4:], alone, atol=1e-5, rtol=1e-4)
        kpm = torch.tensor([[False] * 3 + [True] * 7])  # left padding
        padded = model(ids, key_padding_mask=kpm, positions=torch.tensor([0, 0, 0, 0, 1, 2, 3, 4, 5, 6]))
        torch.testing.assert_close(padded[:, 3:], model(ids[:, 3:]), atol=1e-5, rtol=1e-4)


class Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, *args):
        return self.c * x


def test_block_formulas():
    x = torch.randn(2, 3, 4)
    ctx = AttentionContext()
    attn, mlp, n1, n2 = Scale(2.0), Scale(3.0), Scale(0.5), Scale(0.25)
    h = x + 2.0 * (0.5 * x)  # pre-norm: x + attn(norm(x))
    torch.testing.assert_close(Block(attn, mlp, n1, n2)(x, ctx), h + 3.0 * (0.25 * h))
    h = 0.5 * (x + 2.0 * x)  # post-norm: norm(x + attn(x))
    torch.testing.assert_close(PostNormBlock(attn, mlp, n1, n2)(x, ctx), 0.25 * (h + 3.0 * h))


def test_gpt2_initialisation():
    model = tiny(num_layers=4, dim=128, num_heads=4)
    block = model.blocks[0]
    assert block.attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert block.attn.out_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert block.mlp.fc_out.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert block.attn.q_proj.bias.abs().max() == 0 and block.mlp.fc_in.bias.abs().max() == 0
    assert torch.equal(block.attn_norm.weight, torch.ones(128))
