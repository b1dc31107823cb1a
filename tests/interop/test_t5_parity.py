"""T5 parity with Hugging Face transformers on random tiny checkpoints made at test time: encoder hidden states and
decoder logits (with source padding), greedy and beam generation token for token against ``generate``, the save
round trip, and clear errors."""

from __future__ import annotations

import json
import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

import attnlab  # noqa: E402
from attnlab.interop.t5 import load_t5, save_t5  # noqa: E402
from attnlab.models import create_model  # noqa: E402
from seq2seq_kit import check_generation, check_round_trip  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-4)
GEN = dict(decoder_start_token_id=0, pad_token_id=0, do_sample=False)


def _checkpoint(tmp_path, ff: str, decoder_layers: int = 2, untied: bool = False):
    """(transformers model, folder): random weights perturbed enough that greedy and beam decoding differ.

    ``untied``: T5 1.1's layout, an ``lm_head`` of its own and unscaled decoder outputs (``tie_word_embeddings:
    false``); transformers 5 always ties the head, so the head is written into the folder and the reference model
    is reloaded from it (transformers then keeps the two apart)."""
    cfg = transformers.T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                num_decoder_layers=decoder_layers, num_heads=4, feed_forward_proj=ff, dropout_rate=0.0,
                                relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                **({"tie_word_embeddings": False} if untied else {}))
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    folder = tmp_path / f"{ff}-{decoder_layers}{'-untied' if untied else ''}"
    hf.save_pretrained(folder)
    if untied:
        weights = load_file(folder / "model.safetensors")
        weights["lm_head.weight"] = torch.randn(50, 32, generator=torch.Generator().manual_seed(5)) * 0.2
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        hf = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
        assert not torch.equal(hf.lm_head.weight, hf.shared.weight) and not hf.config.scale_decoder_outputs
    return hf, folder


@pytest.fixture(params=["relu", "gated-gelu", "gated-gelu-untied"])
def checkpoint(request, tmp_path):
    ff, untied = request.param.removesuffix("-untied"), request.param.endswith("-untied")
    return _checkpoint(tmp_path, ff, untied=untied)


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, 50, (4, 9), generator=g)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 6:] = False
    mask[3, 3:] = False
    return src, mask


@pytest.mark.parametrize("ff, decoder_layers, untied", [("relu", 2, False), ("gated-gelu", 2, False),
                                                         ("gated-gelu", 2, True), ("relu", 3, False)])
def test_hidden_states_and_logits_match(tmp_path, ff, decoder_layers, untied):
    hf, folder = _checkpoint(tmp_path, ff, decoder_layers, untied)  # 3 decoder layers: transformers 5's generate cannot
    ours = load_t5(folder)
    assert ours.cfg.tie_weights is not untied and (ours.cfg.logit_scale == 1.0) is untied
    src, mask = _inputs()
    tgt = torch.randint(2, 50, (4, 6), generator=torch.Generator().manual_seed(2))
    tgt[:, 0] = 0
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt)
        torch.testing.assert_close(ours.encode(src, mask)[mask], ref.encoder_last_hidden_state[mask], **TOL)
        torch.testing.assert_close(ours(src, tgt, src_key_padding_mask=mask), ref.logits, **TOL)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("beams", [1, 3, 4])
def test_generation_matches_generate_token_for_token(checkpoint, beams):
    """transformers' defaults on both sides: length_penalty 1.0, early_stopping False (a source stops when its best
    running beam, normalised by the current length, cannot beat its worst finished one). The end token is T5's
    (1), and then one the model produces often, so that hypotheses end early and the stopping rule decides."""
    hf, folder = checkpoint
    assert check_generation(hf, load_t5(folder), _inputs, beams, GEN, bos=0, eos=1) > 0


def test_save_round_trip_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    ours = create_model("t5-small", vocab_size=60, dim=32, num_layers=2, num_heads=4, head_dim=8, mlp_dim=64,
                        logit_scale=32 ** -0.5).eval()
    folder = save_t5(ours, tmp_path / "t5")
    check_round_trip(transformers.T5ForConditionalGeneration, folder, ours, _inputs, torch.zeros(4, 3, dtype=torch.long), tmp_path, TOL)


def test_save_round_trip_of_an_untied_gated_t5(tmp_path):
    hf, folder = _checkpoint(tmp_path, "gated-gelu", untied=True)
    ours = load_t5(folder)
    again, info = transformers.T5ForConditionalGeneration.from_pretrained(save_t5(ours, tmp_path / "out"),
                                                                          output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not torch.equal(again.lm_head.weight, again.shared.weight) and not again.config.scale_decoder_outputs
    src, mask = _inputs()
    tgt = torch.randint(2, 50, (4, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
        torch.testing.assert_close(again.eval()(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits,
                                   ref, atol=0, rtol=0)
        torch.testing.assert_close(ours(src, tgt, src_key_padding_mask=mask), ref, **TOL)


def test_unsupported_t5_features_are_named(checkpoint, tmp_path):
    _, folder = checkpoint
    cfg = json.loads((folder / "config.json").read_text())
    cfg["feed_forward_proj"] = "gated-silu"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"T5 feed_forward_proj='gated-silu' is not supported; attnlab reads"):
        load_t5(folder)
    with pytest.raises(ValueError, match=r"not T5-shaped \(norm='layernorm', position='learned', bias=True"):
        save_t5(create_model("seq2seq-tiny"), tmp_path / "no")
