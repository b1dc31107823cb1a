"""T5 parity with Hugging Face transformers on random tiny checkpoints made at test time: encoder hidden states and
decoder logits (with source padding), greedy and beam generation token for token against ``generate``, the save
round trip, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnlab  # noqa: E402
from attnlab.infer.seq2seq import generate_seq2seq  # noqa: E402
from attnlab.interop.t5 import load_t5, save_t5  # noqa: E402
from attnlab.models import create_model  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-4)
GEN = dict(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, do_sample=False)


def _checkpoint(tmp_path, ff: str, decoder_layers: int = 2):
    """(transformers model, folder): random weights perturbed enough that greedy and beam decoding differ."""
    cfg = transformers.T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                num_decoder_layers=decoder_layers, num_heads=4, feed_forward_proj=ff, dropout_rate=0.0,
                                relative_attention_num_buckets=8, relative_attention_max_distance=20)
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    folder = tmp_path / f"{ff}-{decoder_layers}"
    hf.save_pretrained(folder)
    return hf, folder


@pytest.fixture(params=["relu", "gated-gelu"])
def checkpoint(request, tmp_path):
    return _checkpoint(tmp_path, request.param)


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, 50, (4, 9), generator=g)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 6:] = False
    mask[3, 3:] = False
    return src, mask


@pytest.mark.parametrize("ff, decoder_layers", [("relu", 2), ("gated-gelu", 2), ("relu", 3)])
def test_hidden_states_and_logits_match(tmp_path, ff, decoder_layers):
    hf, folder = _checkpoint(tmp_path, ff, decoder_layers)  # 3 decoder layers: generate() of transformers 5 cannot
    ours = load_t5(folder)
    src, mask = _inputs()
    tgt = torch.randint(2, 50, (4, 6), generator=torch.Generator().manual_seed(2))
    tgt[:, 0] = 0
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt)
        torch.testing.assert_close(ours.encode(src, mask)[mask], ref.encoder_last_hidden_state[mask], **TOL)
        torch.testing.assert_close(ours(src, tgt, src_key_padding_mask=mask), ref.logits, **TOL)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def _trim(rows, eos=1):
    return [r[: r.index(eos) + 1] if eos in r else r for r in rows]


@pytest.mark.parametrize("beams", [1, 4])
def test_generation_matches_generate_token_for_token(checkpoint, beams):
    hf, folder = checkpoint
    ours = load_t5(folder)
    for seed in (1, 2, 3):
        src, mask = _inputs(seed)
        ref = hf.generate(input_ids=src, attention_mask=mask.long(), max_new_tokens=12, num_beams=beams, **GEN)
        out = generate_seq2seq(ours, src, bos_id=0, eos_id=1, max_new_tokens=12, src_key_padding_mask=mask,
                               num_beams=beams)
        assert _trim(out.tolist()) == _trim(ref[:, 1:].tolist())


def test_save_round_trip_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    ours = create_model("t5-small", vocab_size=60, dim=32, num_layers=2, num_heads=4, head_dim=8, mlp_dim=64,
                        logit_scale=32 ** -0.5).eval()
    folder = save_t5(ours, tmp_path / "t5")
    hf, info = transformers.T5ForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    src, mask = _inputs()
    src = src % 60
    tgt = torch.zeros(4, 3, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(hf.eval()(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits,
                                   ours(src, tgt, src_key_padding_mask=mask), **TOL)
    again = attnlab.load_pretrained(attnlab.save_pretrained(ours, tmp_path / "again"))
    with torch.no_grad():
        torch.testing.assert_close(again(src, tgt, src_key_padding_mask=mask), ours(src, tgt, src_key_padding_mask=mask),
                                   atol=0, rtol=0)


def test_unsupported_t5_features_are_named(checkpoint, tmp_path):
    _, folder = checkpoint
    cfg = json.loads((folder / "config.json").read_text())
    cfg["feed_forward_proj"] = "gated-silu"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"T5 feed_forward_proj='gated-silu' is not supported; attnlab reads"):
        load_t5(folder)
    with pytest.raises(ValueError, match=r"not T5-shaped \(norm='layernorm', position='learned', bias=True"):
        save_t5(create_model("seq2seq-tiny"), tmp_path / "no")
