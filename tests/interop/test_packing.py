"""Padding-free batches (ByteTransformer, Zhai et al. 2023) and the embed API's contract."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

import attnlab
from attnlab.attention import describe_attention
from attnlab.infer.packing import pack, pack_padded, segment_mean, unpack
from attnlab.interop import TextTokenizer, load_pretrained
from attnlab.models import create_model

pytest.importorskip("transformers")
EMBED = importlib.import_module("attnlab.infer.embed")  # the module (attnlab.embed is the function)


def test_cu_seqlens_and_word_idx_hand_example():
    ids = torch.tensor([[5, 6, 7, 0], [0, 0, 0, 0], [8, 9, 0, 0]])
    mask = ids != 0
    packed, word_idx = pack_padded(ids, mask)
    assert packed.cu_seqlens.tolist() == [0, 3, 3, 5]
    assert word_idx.tolist() == [0, 1, 2, 8, 9]
    assert packed.ids.tolist() == [[5, 6, 7, 8, 9]]
    assert packed.document_ids.tolist() == [[0, 0, 0, 2, 2]] and packed.positions.tolist() == [[0, 1, 2, 0, 1]]
    hidden = torch.arange(10.0).view(1, 5, 2)
    back = unpack(hidden, word_idx, 3, 4)  # round trip: valid rows back in place, exact zeros elsewhere
    assert torch.equal(back[mask], hidden[0]) and not back[~mask].any()
    assert_close(segment_mean(hidden, packed), torch.tensor([[2.0, 3.0], [0.0, 0.0], [7.0, 8.0]]))


def _bert(hf_checkpoint):
    return load_pretrained(hf_checkpoint("BertModel")[0])


@pytest.mark.parametrize("pad_to", [12, 20])
def test_packed_equals_padded_and_ignores_padded_length(hf_checkpoint, pad_to):
    model = _bert(hf_checkpoint)
    g = torch.Generator().manual_seed(5)
    lengths = [12, 0, 5, 1, 9]  # includes an empty sequence and a full-length one
    ids = torch.randint(1, 99, (5, pad_to), generator=g)
    mask = torch.arange(pad_to)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        padded = model(ids, mask)
        packed, word_idx = pack_padded(ids, mask)
        out = unpack(model(packed.ids, document_ids=packed.document_ids, positions=packed.positions), word_idx, 5, pad_to)
    assert_close(out[mask], padded[mask], atol=1e-5, rtol=1e-5)
    assert not out[~mask].any()
    if pad_to == 20:  # same valid outputs as with S=12 (results do not depend on the padded length)
        ids12 = ids[:, :12]
        with torch.no_grad():
            ref = model(ids12, mask[:, :12])
        assert_close(out[:, :12][mask[:, :12]], ref[mask[:, :12]], atol=1e-5, rtol=1e-5)


def test_linear_layers_see_exactly_the_real_tokens(hf_checkpoint):
    model = _bert(hf_checkpoint)
    rows: list[int] = []
    hooks = [m.register_forward_hook(lambda m, a, o: rows.append(a[0].reshape(-1, a[0].shape[-1]).shape[0]))
             for m in model.modules() if isinstance(m, nn.Linear) and m is not model.pooler.dense]
    packed = pack([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        model(packed.ids, document_ids=packed.document_ids, positions=packed.positions)
    for h in hooks:
        h.remove()
    assert rows and set(rows) == {12}  # N = 3 + 2 + 7, never B * max_len = 21


def test_embed_contract(hf_checkpoint, tmp_path):
    folder, _ = hf_checkpoint("BertModel")
    model = load_pretrained(folder)
    model.tokenizer = _toy_tokenizer()
    texts = ["a b c", "b", "c a a b b c", "", "a"]
    one = attnlab.embed(texts, model, batch_size=1, progress=False)
    many = attnlab.embed(texts, model, batch_size=3, progress=False)
    assert one.shape == (5, 32)
    assert_close(one, many, atol=1e-5, rtol=0)  # order and batching do not change results
    assert_close(one.norm(dim=-1), torch.ones(5))
    raw = attnlab.embed(texts, model, normalize=False, progress=False)
    seqs = model.tokenizer.encode(texts)
    ids, mask = model.tokenizer.pad(seqs)
    with torch.no_grad():
        ref = attnlab.models.pool(model(ids, mask), mask, "mean")
    assert_close(raw, ref, atol=1e-5, rtol=1e-5)
    assert attnlab.embed([], model, progress=False).shape == (0, 32)


@pytest.mark.parametrize("kwargs, match", [
    (dict(texts="just one string"), "list of strings"),
    (dict(batch_size=0), "batch_size"),
    (dict(dtype=torch.float16), "dtype"),
    (dict(workers=0), "workers"),
    (dict(workers=2.0), "workers"),
])
def test_embed_bad_arguments(hf_checkpoint, kwargs, match):
    model = load_pretrained(hf_checkpoint("BertModel")[0])
    model.tokenizer = _toy_tokenizer()
    args = {"texts": ["a"], **kwargs}
    with pytest.raises(ValueError, match=match):
        attnlab.embed(args.pop("texts"), model, progress=False, **args)


def test_embed_needs_an_encoder_with_a_tokenizer(hf_checkpoint):
    with pytest.raises(ValueError, match="needs an Encoder"):
        attnlab.embed(["a"], create_model("gpt-tiny"), progress=False)
    with pytest.raises(ValueError, match="no tokenizer"):
        attnlab.embed(["a"], load_pretrained(hf_checkpoint("BertModel")[0]), progress=False)


def test_embed_falls_back_to_padded_batches_for_kernels_without_packing(hf_checkpoint, monkeypatch):
    folder, _ = hf_checkpoint("BertModel")
    texts = ["a b c", "b", "c a a b b c", "a"]
    unpackable = [r["name"] for r in describe_attention() if not r["capabilities"]["packed"]
                  and r["capabilities"]["bidirectional"] and not r["capabilities"]["requires_grid"]
                  and r["capabilities"]["key_padding_mask"]]  # padded batches need the padding mask
    if not unpackable:
        pytest.skip("every registered kernel takes packed sequences")
    model = load_pretrained(folder, attention=unpackable[0])
    model.tokenizer = _toy_tokenizer()
    assert not EMBED.supports_packing(model)
    monkeypatch.setattr(EMBED, "_encode_packed", None)  # would fail if called
    out = attnlab.embed(texts, model, batch_size=2, progress=False)
    seqs = model.tokenizer.encode(texts)
    ids, mask = model.tokenizer.pad(seqs)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(attnlab.models.pool(model(ids, mask), mask, "mean"), dim=-1)
    assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _toy_tokenizer() -> TextTokenizer:
    """A 3-word WordLevel tokenizer with [CLS] ... [SEP] around each text (ids fit a vocab of 99)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "b": 5, "c": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return TextTokenizer(tok, max_length=64)


def test_cli_embed_writes_npy(hf_checkpoint, tmp_path, capsys):
    import argparse

    from attnlab.cli.embed import add_embed_parser

    folder, _ = hf_checkpoint("BertModel")
    model = load_pretrained(folder)
    model.tokenizer = _toy_tokenizer()
    (folder_tok := tmp_path / "model").mkdir()
    for f in folder.iterdir():
        (folder_tok / f.name).write_bytes(f.read_bytes())
    (folder_tok / "tokenizer.json").write_text(model.tokenizer.tokenizer.to_str())
    (tmp_path / "in.txt").write_text("a b c\nb\n\nc a\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_embed_parser(parser.add_subparsers())
    args = parser.parse_args(["embed", "--model", str(folder_tok), "--input", str(tmp_path / "in.txt"),
                              "--output", str(tmp_path / "out.npy"), "--no-progress", "--workers", "2"])
    assert args.handler(args) == 0
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (4, 32) and "wrote 4 x 32" in capsys.readouterr().out
    assert_close(torch.from_numpy(out), attnlab.embed(["a b c", "b", "", "c a"], model, progress=False),
                 atol=1e-6, rtol=0)
    bad = parser.parse_args(["embed", "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "x.txt")])
    with pytest.raises(ValueError, match=r"\.npy"):
        bad.handler(bad)


def test_bf16_copy_follows_weight_updates(hf_checkpoint):
    model = load_pretrained(hf_checkpoint("BertModel")[0])
    model.tokenizer = _toy_tokenizer()
    before = attnlab.embed(["a b c"], model, dtype=torch.bfloat16, progress=False)
    with torch.no_grad():
        model.embed.tok_emb.weight.mul_(-1.0)  # an in-place update, like an optimizer step
    after = attnlab.embed(["a b c"], model, dtype=torch.bfloat16, progress=False)
    fp32 = attnlab.embed(["a b c"], model, progress=False)
    assert (before - after).abs().max() > 0.1
    assert (after * fp32).sum() > 0.99


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu"])
def test_fused_mlp_equals_mlp(activation):
    from attnlab.infer.fused import FusedMLP, fusion_available
    from attnlab.layers.mlp import MLP

    if not fusion_available(torch.device("cpu")):
        pytest.skip("this PyTorch build has no oneDNN fused linear")
    mlp = MLP(16, 40, activation).eval()
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        assert_close(FusedMLP(mlp)(x), mlp(x), atol=1e-5, rtol=1e-5)


def test_embed_ignores_training_mode(hf_checkpoint):
    model = load_pretrained(hf_checkpoint("BertModel")[0])
    model.tokenizer = _toy_tokenizer()
    ref = attnlab.embed(["a b c", "c"], model, progress=False)
    model.train()  # the checkpoint's hidden dropout (0.1) would be active in training mode
    assert_close(attnlab.embed(["a b c", "c"], model, progress=False), ref)
    assert model.training  # and the caller's mode is restored


TEXTS = ["a b c", "b", "c a a b b c", "", "a", "c c", "b a c a", "a b", "c", "b b b b b b b"]


def test_concurrent_workers_give_the_same_embeddings_and_restore_threads(hf_checkpoint):
    model = load_pretrained(hf_checkpoint("BertModel")[0])
    model.tokenizer = _toy_tokenizer()
    threads = torch.get_num_threads()
    one = attnlab.embed(TEXTS, model, batch_size=2, progress=False, workers=1)
    for workers in (2, 3, None):
        assert_close(attnlab.embed(TEXTS, model, batch_size=2, progress=False, workers=workers), one,
                     atol=1e-6, rtol=0)
        assert torch.get_num_threads() == threads


def test_workers_inherit_the_callers_autocast_and_run_in_inference_mode(hf_checkpoint, monkeypatch):
    """autocast and inference mode are per-thread state: each worker thread must re-enter them."""
    import threading

    model = load_pretrained(hf_checkpoint("BertModel")[0])
    model.tokenizer = _toy_tokenizer()
    seen, real = [], EMBED._encode_packed

    def spy(runner, batch, device):
        seen.append((threading.current_thread().name, torch.is_autocast_enabled("cpu"),
                     torch.get_autocast_dtype("cpu"), torch.is_inference_mode_enabled()))
        return real(runner, batch, device)

    monkeypatch.setattr(EMBED, "_encode_packed", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto1 = attnlab.embed(TEXTS, model, batch_size=2, progress=False, workers=1)
        auto3 = attnlab.embed(TEXTS, model, batch_size=2, progress=False, workers=3)
    assert_close(auto3, auto1, atol=1e-6, rtol=0)
    workers = [s for s in seen if s[0].startswith("attnlab-embed")]
    assert len(workers) == 5 and len(seen) == 10  # 5 batches each run
    assert all(s[1:] == (True, torch.bfloat16, True) for s in seen)
    seen.clear()
    attnlab.embed(TEXTS, model, batch_size=2, progress=False, workers=3)
    assert len(seen) == 5 and not any(s[1] for s in seen)  # no autocast outside the context


def test_a_failing_worker_raises_in_the_caller_and_restores_threads(hf_checkpoint, monkeypatch):
    model = load_pretrained(hf_checkpoint("BertModel")[0])
    model.tokenizer = _toy_tokenizer()
    threads, real = torch.get_num_threads(), EMBED._encode_packed

    def flaky(runner, batch, device):
        if len(batch[0]) >= 5:  # batches are length-sorted: the later ones fail
            raise RuntimeError("worker failed on a long batch")
        return real(runner, batch, device)

    monkeypatch.setattr(EMBED, "_encode_packed", flaky)
    with pytest.raises(RuntimeError, match="worker failed"):
        attnlab.embed(TEXTS, model, batch_size=2, progress=False, workers=2)
    assert torch.get_num_threads() == threads
