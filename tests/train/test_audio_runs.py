"""Audio and bytes classification through `attnlab train` / `attnlab eval`: AST on spoken keywords (validation on its
own voices, SpecAugment that resumes exactly), ByteFormer on file types, and the errors for models that do not fit."""

from __future__ import annotations

import json

import pytest
import torch

from attnlab.config import build_config
from attnlab.data.sources import locate

needs_espeak = pytest.mark.skipif(locate("espeak") is None, reason="espeak-ng missing: apt-get install -y espeak-ng")
from attnlab.train import evaluate_run, train
from attnlab.train.build import build_for_config
from attnlab.train.task_feeds import AugmentedAudioFeed, feed_for_config

KEYWORDS = dict(train_voices=40, val_voices=3, test_voices=3, frames=64, mel_bins=32)
SMALL = {**KEYWORDS, "train_voices": 6}
TRAIN = {"lr": 2e-3, "warmup_steps": 10, "eval_batches": 4, "precision": "fp32", "weight_decay": 0.0}


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    """One speech cache for the module: the clips are synthesised once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def config(run_dir, dataset="keywords", model="ast-tiny", steps=150, options=None, **model_overrides):
    return build_config({"model": {"name": model, **model_overrides},
                         "data": {"dataset": dataset, "options": KEYWORDS if options is None else options,
                                  "batch_size": 32},
                         "train": {"steps": steps, "eval_every": 50, "checkpoint_every": steps,
                                   "run_dir": str(run_dir), **TRAIN}})


def evals(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_accuracy" in r]


@needs_espeak
def test_ast_learns_keywords_and_eval_scores_held_out_voices(tmp_path):
    run = tmp_path / "ast"
    train(config(run, steps=300), progress=False)
    rows = evals(run)
    assert rows[-1]["val_loss"] < 0.8 * rows[0]["val_loss"] and rows[-1]["val_accuracy"] > 0.35  # chance: 0.1
    result = evaluate_run(run, progress=False)
    assert result["examples"] == 30 and result["accuracy"] > 0.3  # 3 voices never heard in training


@needs_espeak
def test_validation_and_test_are_different_voices():
    feed = feed_for_config(config("unused", options=SMALL))
    val, test = feed.eval_batches(64, 1), feed.eval_batches(64, 1, split="test")
    assert len(val[0]["targets"]) == len(test[0]["targets"]) == 30
    assert not torch.equal(val[0]["spectrogram"], test[0]["spectrogram"])
    assert torch.equal(val[0]["spectrogram"], feed.dataset.val.inputs)


@needs_espeak
def test_spec_augment_batches_are_a_function_of_seed_and_step():
    feed = feed_for_config(config("unused", options={**SMALL, "freq_mask": 8, "time_mask": 12}))
    assert isinstance(feed, AugmentedAudioFeed)
    a, b = feed.sampler(8, seed=5), feed.sampler(8, seed=5)
    first = [a.next() for _ in range(3)]
    b.load_state_dict({**a.state_dict(), "position": 1})
    assert torch.equal(b.next()["spectrogram"], first[1]["spectrogram"])
    masked = (first[0]["spectrogram"] == 0).all(dim=1).any() or (first[0]["spectrogram"] == 0).all(dim=2).any()
    assert masked  # some spectrogram lost a whole band of bins or frames
    plain = feed_for_config(config("unused", options=SMALL))
    assert not isinstance(plain, AugmentedAudioFeed)


def test_byteformer_learns_file_types(tmp_path):
    tree = tmp_path / "files"
    (tree / "x").mkdir(parents=True)
    for i in range(40):
        (tree / "x" / f"a{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes((i * 7 + j) % 256 for j in range(300)))
        (tree / "x" / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 10)
        (tree / f"d{i}.json").write_text('{"values": [' + ", ".join(str(i * j) for j in range(60)) + "]}")
    options = dict(max_bytes=128, per_class=40, min_per_class=10, roots=[str(tree)])
    run = tmp_path / "bytes"
    train(config(run, dataset="file_types", model="byteformer-tiny", steps=100, options=options), progress=False)
    rows = evals(run)
    assert rows[-1]["val_loss"] < 0.3 and rows[-1]["val_accuracy"] > 0.9  # chance: ln 3 = 1.1; headers differ


@needs_espeak
@pytest.mark.parametrize("dataset, model, options, overrides, message", [
    ("keywords", "byteformer-tiny", SMALL, {}, "needs a spectrogram model"),
    ("keywords", "ast-tiny", {**SMALL, "frames": 98, "mel_bins": 128}, {}, "set model.frames=98 model.mel_bins=128"),
    ("keyword_bytes", "byteformer-tiny", dict(train_voices=2, val_voices=1, test_voices=1), {},
     "set model.max_seq_len=2013"),
    ("keyword_bytes", "ast-tiny", dict(train_voices=2, val_voices=1, test_voices=1), {}, "needs a bytes model"),
    ("sentiment", "ast-tiny", {}, {}, "holds tokens, not images, audio or files"),
])
def test_models_that_do_not_fit_the_data_are_one_line(tmp_path, dataset, model, options, overrides, message):
    cfg = config(tmp_path / "r", dataset=dataset, model=model, options=options, **overrides)
    with pytest.raises(ValueError, match=message):
        build_for_config(cfg, torch.device("cpu"), feed_for_config(cfg))


@needs_espeak
def test_ssast_pretrains_and_its_encoder_seeds_a_fine_tune(tmp_path):
    from safetensors.torch import load_file

    from attnlab.train.checkpoint import latest_checkpoint

    pre = tmp_path / "ssast"
    cfg = config(pre, model="ssast-tiny", steps=120, options=SMALL)
    cfg.objective.name = "ssast"
    train(cfg, progress=False)
    losses = [json.loads(line)["loss"] for line in (pre / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line and "val_loss" not in line]
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])  # discriminative + 10 x generative falls
    scores = evaluate_run(pre, progress=False)
    assert scores["split"] == "test" and {"discriminative_loss", "generative_loss", "pretext_accuracy"} <= set(scores)
    tune = tmp_path / "tune"
    ft = config(tune, steps=5, options=SMALL, patch_stride=[8, 8], max_seq_len=34, init_from=str(pre))
    train(ft, progress=False)
    source = load_file(str(latest_checkpoint(pre).path / "model.safetensors"))
    _, model, _ = build_for_config(ft, torch.device("cpu"), feed_for_config(ft))
    from attnlab.train.init_from import init_from_run

    report = init_from_run(model, pre)
    assert "body.embed.proj.weight" in report["loaded"] and "head.weight" in report["initialised"]
    assert torch.equal(dict(model.named_parameters())["body.embed.proj.weight"], source["encoder.embed.proj.weight"])


@needs_espeak
@pytest.mark.parametrize("model, dataset, message", [
    ("ast-tiny", "keywords", "pretrains an SSAST preset"),
    ("ssast-tiny", "sentiment", "pretrains on spectrograms: set data.dataset"),
])
def test_ssast_misuse_is_one_line(tmp_path, model, dataset, message):
    cfg = config(tmp_path / "r", dataset=dataset, model=model, options=SMALL if dataset == "keywords" else {})
    cfg.objective.name = "ssast"
    with pytest.raises(ValueError, match=message):
        build_for_config(cfg, torch.device("cpu"), feed_for_config(cfg))
