"""BART parity with Hugging Face transformers on random tiny checkpoints made at test time: encoder hidden states and
decoder logits (with source padding), greedy and beam generation token for token against ``generate``, BartModel
folders, the save round trip, and clear errors."""

from __future__ import annotations

import json
import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnlab  # noqa: E402
from attnlab.interop.bart import load_bart, save_bart  # noqa: E402
from attnlab.models import create_model  # noqa: E402
from seq2seq_kit import check_generation, check_round_trip  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-4)
# BART starts decoding from its end token (2); transformers' extra logits processors are switched off on its side
GEN = dict(decoder_start_token_id=2, pad_token_id=1, do_sample=False, forced_eos_token_id=None,
           forced_bos_token_id=None, no_repeat_ngram_size=0)


def _checkpoint(tmp_path, decoder_layers: int = 2, activation: str = "gelu", base_model: bool = False):
    """(transformers model, folder): random weights perturbed enough that greedy and beam decoding differ."""
    cfg = transformers.BartConfig(vocab_size=50, d_model=32, encoder_layers=2, decoder_layers=decoder_layers,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                  decoder_ffn_dim=64, max_position_embeddings=40, activation_function=activation,
                                  dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    torch.manual_seed(0)
    hf = transformers.BartForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        hf.final_logits_bias.normal_()
    folder = tmp_path / f"bart-{decoder_layers}-{activation}{'-base' if base_model else ''}"
    (hf.model if base_model else hf).save_pretrained(folder)
    return hf, folder


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, 50, (4, 9), generator=g)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 6:] = False
    mask[3, 3:] = False
    return src, mask


@pytest.mark.parametrize("decoder_layers, activation", [(2, "gelu"), (3, "relu")])
def test_hidden_states_and_logits_match(tmp_path, decoder_layers, activation):
    hf, folder = _checkpoint(tmp_path, decoder_layers, activation)
    ours = load_bart(folder)
    src, mask = _inputs()
    tgt = torch.randint(3, 50, (4, 6), generator=torch.Generator().manual_seed(2))
    tgt[:, 0] = 2
    with torch.no_grad():
        ref = hf(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt)
        torch.testing.assert_close(ours.encode(src, mask)[mask], ref.encoder_last_hidden_state[mask], **TOL)
        torch.testing.assert_close(ours(src, tgt, src_key_padding_mask=mask), ref.logits, **TOL)
    theirs = sum(p.numel() for p in hf.parameters()) + hf.final_logits_bias.numel() - 2 * 2 * 32  # offset rows
    assert sum(p.numel() for p in ours.parameters()) == theirs


def test_a_bart_model_folder_loads_without_the_logits_bias(tmp_path):
    hf, folder = _checkpoint(tmp_path, base_model=True)
    ours = attnlab.load_pretrained(folder)
    src, mask = _inputs()
    tgt = torch.full((4, 3), 2)
    with torch.no_grad():
        ref = hf.model(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).last_hidden_state
        logits = ours(src, tgt, src_key_padding_mask=mask)
    assert torch.equal(ours.head.bias, torch.zeros(50))
    torch.testing.assert_close(logits, ref @ hf.model.shared.weight.t(), **TOL)


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_matches_generate_token_for_token(tmp_path, beams):
    hf, folder = _checkpoint(tmp_path)
    assert check_generation(hf, load_bart(folder), _inputs, beams, GEN, bos=2, eos=2, seeds=(1, 2)) > 0


def test_save_round_trip_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    ours = create_model("seq2seq-tiny", vocab_size=60, dim=32, num_layers=2, num_heads=4, mlp_dim=64, prenorm=False,
                        embed_norm=True, decoder_embeddings=True, logits_bias=True, activation="gelu",
                        max_seq_len=40).eval()
    with torch.no_grad():
        ours.head.bias.normal_()
    folder = save_bart(ours, tmp_path / "bart")
    check_round_trip(transformers.BartForConditionalGeneration, folder, ours, _inputs, torch.full((4, 3), 2), tmp_path, TOL)


def test_attention_swap_and_unsupported_configs_are_named(tmp_path):
    _, folder = _checkpoint(tmp_path)
    swapped = attnlab.load_pretrained(folder, attention="sliding_window", window=4)
    assert swapped.blocks[0].self_attn.kernel.name == "sliding_window"
    config = json.loads((folder / "config.json").read_text())
    for change, message in [({"scale_embedding": True}, "scale_embedding=True"),
                            ({"normalize_before": True}, "pre-norm layers"),
                            ({"decoder_ffn_dim": 128}, "encoder_ffn_dim=64 != decoder_ffn_dim=128")]:
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message):
            load_bart(folder)
    with pytest.raises(ValueError, match="not BART-shaped .*prenorm=True"):
        save_bart(create_model("seq2seq-tiny"), tmp_path / "no")
