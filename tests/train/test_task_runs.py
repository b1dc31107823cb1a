"""`attnlab train` beyond language modelling: seq2seq datasets (objective seq2seq, label smoothing, decoding
metrics), masked language modelling of a text corpus, suite datasets, and `model.init_from` (pretrain, then
fine-tune under a new head)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from attnlab.config import build_config
from attnlab.objectives import objective_step
from attnlab.objectives.seq2seq import character_error_rate, seq2seq_step
from attnlab.train import evaluate_run, load_run, train
from attnlab.train.checkpoint import latest_checkpoint
from attnlab.train.task_feeds import MLMFeed, feed_for_config, word_boundaries, word_ids
from attnlab.data.text import build_lm_data
from attnlab.data.text.tokenizers import ByteTokenizer

from trainkit import text_file  # noqa: F401  (fixture)

TRAIN = {"lr": 3e-3, "warmup_steps": 5, "eval_batches": 2, "precision": "fp32", "weight_decay": 0.0}


def seq2seq_config(run_dir, steps=200, **objective):
    return build_config({
        "model": {"name": "seq2seq-tiny", "dim": 32, "num_heads": 2, "max_seq_len": 16},
        "data": {"dataset": "reversal", "options": {"num_train": 400, "num_test": 40, "max_len": 5,
                                                     "num_symbols": 6}, "batch_size": 32},
        "objective": {"name": "seq2seq", **objective},
        "train": {"steps": steps, "eval_every": 50, "checkpoint_every": steps, "run_dir": str(run_dir), **TRAIN}})


def mlm_config(text, run_dir, steps=40, **model):
    return build_config({
        "model": {"name": "encoder-tiny", "dim": 32, "num_layers": 2, "num_heads": 2, "max_seq_len": 32,
                  "position": "rope", **model},
        "data": {"dataset": str(text), "tokenizer": "byte", "batch_size": 16, "seq_len": 32},
        "objective": {"name": "mlm", "whole_word": True},
        "train": {"steps": steps, "eval_every": 100, "checkpoint_every": steps, "run_dir": str(run_dir), **TRAIN}})


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_seq2seq_recipe_trains_and_eval_decodes_the_test_split(tmp_path):
    run = tmp_path / "rev"
    train(seq2seq_config(run), progress=False)
    evals = [r for r in rows(run) if "val_loss" in r]
    assert evals[-1]["val_loss"] < 0.6 * evals[0]["val_loss"]
    assert {"val_token_accuracy", "val_exact_match"} <= set(evals[-1])
    result = evaluate_run(run, progress=False)
    assert result["objective"] == "seq2seq" and result["examples"] == 40
    assert 0.0 <= result["exact_match"] <= 1.0 and 0.0 <= result["cer"]
    # the decoding metrics agree with a direct greedy decode of the same checkpoint
    assert result["exact_match"] == pytest.approx(_direct_exact_match(run), abs=1e-9)
    assert json.loads((run / "eval.json").read_text())["exact_match"] == result["exact_match"]
    with pytest.raises(ValueError, match="applies to image classification runs.*leave out --tta"):
        evaluate_run(run, progress=False, save=False, tta="flip")
    with pytest.raises(ValueError, match="--split train scores language models and classifiers; this seq2seq run"):
        evaluate_run(run, split="train", progress=False, save=False)


def _direct_exact_match(run) -> float:
    from attnlab.data.registry import get_dataset
    from attnlab.infer.seq2seq import generate_seq2seq
    from attnlab.train.build import build_for_config
    from attnlab.train.checkpoint import load_weights
    from attnlab.config import load_config

    cfg = load_config(run / "config.yaml")
    data = get_dataset("reversal", **cfg.data.options)
    _, model, _ = build_for_config(cfg, torch.device("cpu"), feed_for_config(cfg))
    load_weights(model, latest_checkpoint(run))
    out = generate_seq2seq(model.eval(), data.test.src, bos_id=1, eos_id=2, max_new_tokens=data.test.tgt_out.shape[1],
                           src_key_padding_mask=data.test.src_key_padding_mask)
    pred = [r[: r.index(2)] if 2 in r else r for r in out.tolist()]
    return sum(p == t for p, t in zip(pred, data.test.targets())) / len(pred)


def test_label_smoothing_is_the_smoothed_cross_entropy_and_reports_the_plain_one():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7)
    tgt_out = torch.randint(0, 7, (3, 4))
    tgt_out[0, 3] = -100
    model = lambda src, tgt_in, src_key_padding_mask=None: logits  # noqa: E731
    batch = {"src": torch.zeros(3, 2, dtype=torch.long), "tgt_in": tgt_out.clamp(min=0), "tgt_out": tgt_out}
    loss, metrics = seq2seq_step(model, batch, label_smoothing=0.1)
    logp = logits.log_softmax(-1)[tgt_out != -100]  # (N, V)
    target = tgt_out[tgt_out != -100]
    expected = (0.9 * -logp.gather(1, target[:, None]).squeeze(1) + 0.1 * -logp.mean(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["loss"].item() == pytest.approx(F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten()).item(),
                                                   rel=1e-6)
    assert objective_step("seq2seq", label_smoothing=0.1)(model, batch)[0].item() == pytest.approx(loss.item())


def test_character_error_rate_is_edit_distance_over_reference_length():
    kitten, sitting = [list(b"kitten")], [list(b"sitting")]
    assert character_error_rate(kitten, sitting) == pytest.approx(3 / 7)
    assert character_error_rate([[1, 2, 3], []], [[1, 2, 3], [4, 5]]) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        character_error_rate([[1], [2]], [[1]])


def test_whole_word_ids_follow_spaces_for_a_byte_tokenizer():
    tok = ByteTokenizer()
    ids = torch.from_numpy(tok.encode("in the  beginning")).long()[None]
    wid = word_ids(ids, *word_boundaries(tok))[0].tolist()
    text = "in the  beginning"
    words = {}
    for ch, w in zip(text, wid):
        words.setdefault(w, []).append(ch)
    assert ["".join(v) for v in words.values()] == ["in", " ", "the", " ", " ", "beginning"]


def test_mlm_feed_masks_are_a_function_of_seed_and_step(text_file):  # noqa: F811
    data = build_lm_data(str(text_file), "byte", 32)
    feed = MLMFeed(data, 0.15, whole_word=True)
    a, b = feed.sampler(8, seed=3), feed.sampler(8, seed=3)
    first = [a.next() for _ in range(3)]
    b.load_state_dict({**a.state_dict(), "position": 2})
    assert torch.equal(b.next()["idx"], first[2]["idx"]) and torch.equal(a.next()["labels"], b.next()["labels"])
    picked = first[0]["labels"] != -100
    assert 0.05 < picked.float().mean() < 0.3 and feed.vocab_size == 257
    assert (first[0]["idx"][picked] == feed.mask_id).float().mean() > 0.6


def test_mlm_recipe_raises_masked_accuracy_and_init_from_seeds_a_classifier(tmp_path, text_file):  # noqa: F811
    pre = tmp_path / "mlm"
    train(mlm_config(text_file, pre, steps=300), progress=False)
    evals = [r for r in rows(pre) if "val_masked_accuracy" in r]
    text = text_file.read_bytes()
    unigram = max(text.count(bytes([b])) for b in set(text)) / len(text)  # always guess the commonest byte (space)
    assert evals[-1]["val_masked_accuracy"] > unigram + 0.05, (evals[-1], unigram)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert evaluate_run(pre, progress=False)["masked_accuracy"] > 0.2

    from attnlab.train.trainer import Trainer
    from attnlab.train import distributed as D

    cfg = build_config({
        "model": {"name": "encoder-tiny", "dim": 32, "num_layers": 2, "num_heads": 2, "max_seq_len": 32,
                  "position": "rope", "init_from": str(pre)},
        "data": {"dataset": "sentiment", "options": {"max_len": 32}, "batch_size": 8},
        "train": {"steps": 2, "run_dir": str(tmp_path / "ft"), **TRAIN}})
    trainer = Trainer(cfg, D.init_distributed("cpu"), progress=False, feed=feed_for_config(cfg))
    trainer.prepare(resume=False, overwrite=False)
    try:
        source = load_file(str(latest_checkpoint(pre).path / "model.safetensors"))
        state = trainer.raw_model.state_dict()
        body = {k.removeprefix("body."): v for k, v in state.items()
                if k.startswith("body.") and not k.endswith("tok_emb.weight")}
        assert len(body) > 10 and all(torch.equal(v, source[k]) for k, v in body.items())
        assert set(state) - {f"body.{k}" for k in body} == {"body.embed.tok_emb.weight", "head.weight", "head.bias"}
        emb = state["body.embed.tok_emb.weight"]
        assert torch.equal(emb[:256], source["embed.tok_emb.weight"][:256])  # the byte rows; specials are new
    finally:
        trainer.close()


def test_init_from_a_run_of_another_shape_is_one_line(tmp_path, text_file):  # noqa: F811
    pre = tmp_path / "mlm"
    train(mlm_config(text_file, pre, steps=2), progress=False)
    with pytest.raises(ValueError, match=r"does not fit this model: .* is \(.*\) there but \(.*\) here; use the "):
        train(mlm_config(text_file, tmp_path / "b", steps=2, dim=48, init_from=str(pre)), progress=False)
    with pytest.raises(FileNotFoundError, match="is not a run folder"):
        train(mlm_config(text_file, tmp_path / "c", steps=2, init_from=str(tmp_path)), progress=False)


@pytest.mark.parametrize("raw, message", [
    ({"objective": {"name": "seq2seq"}, "data": {"dataset": "kjv"}},
     r"objective.name=seq2seq trains on a seq2seq dataset, not 'kjv'; set data.dataset to one of \['addition'"),
    ({"data": {"dataset": "kjv", "options": {"max_len": 3}}}, r"data.options \['max_len'\] apply to suite datasets"),
    ({"objective": {"name": "lm", "whole_word": True}}, "objective.mask_prob and objective.whole_word apply to "
                                                         "objective mlm"),
])
def test_task_config_errors_are_one_line(raw, message):
    with pytest.raises(ValueError, match=message):
        feed_for_config(build_config(raw))


def test_wrong_family_and_options_are_refused_at_build(tmp_path):
    cfg = seq2seq_config(tmp_path / "r")
    cfg.model.name = "gpt-tiny"
    with pytest.raises(ValueError, match="the seq2seq objective trains an encoder-decoder: set model.name to a seq2seq"):
        train(build_config(json.loads(cfg.model_dump_json())), progress=False)
    with pytest.raises(ValueError, match=r"objective.label_smoothing does not apply to objective 'lm' \(it applies to "
                                         r"\['classify', 'mlm', 'seq2seq'\]\)"):
        objective_step("lm", label_smoothing=0.1)


def test_generate_on_a_seq2seq_run_points_to_eval(tmp_path):
    run = tmp_path / "rev"
    train(seq2seq_config(run, steps=2), progress=False)
    with pytest.raises(ValueError, match=r"`attnlab generate` continues the text of language-model runs: score this run "
                                         r"with `attnlab eval "):
        load_run(run)
