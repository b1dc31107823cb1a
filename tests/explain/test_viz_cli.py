"""`attnlab viz` on tiny trained runs: every method writes its PNG and JSON with sensible numbers; bad inputs are
one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.cli import main
from attnlab.config import build_config
from attnlab.train.trainer import train
from attnlab.explain.maps import maps_with_gradients
from attnlab.explain.runs import open_subject

TRAIN = {"steps": 40, "eval_every": 40, "checkpoint_every": 40, "lr": 3e-3, "warmup_steps": 5, "eval_batches": 2,
         "precision": "fp32"}


def _train(run_dir, model: dict, data: dict) -> str:
    train(build_config({"model": model, "data": data, "train": {**TRAIN, "run_dir": str(run_dir)}}), progress=False)
    return str(run_dir)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("viz") / "vit", {"name": "vit-digits", "dim": 32, "num_layers": 2,
                                                           "num_heads": 2}, {"dataset": "digits", "batch_size": 64})


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("viz") / "gpt", {"name": "gpt-tiny", "max_seq_len": 32},
                  {"dataset": "kjv", "seq_len": 32, "batch_size": 8})


def _json(run, method):
    return json.loads((__import__("pathlib").Path(run) / "viz" / f"{method}.json").read_text())


@pytest.mark.parametrize("method", ["rollout", "grad_rollout", "raw"])
def test_image_relevance_covers_the_patch_grid_and_sums_to_one(image_run, method, capsys):
    assert main(["viz", image_run, "--method", method, "--index", "5"]) == 0
    assert f"{image_run}/viz/{method}.png" in capsys.readouterr().out
    rec = _json(image_run, method)
    rel = np.array(rec["relevance"])
    assert rel.shape == (16,) and (rel >= 0).all()            # the 4x4 patch grid of an 8x8 digit
    if method != "grad_rollout":                               # mean pooling: the mean of stochastic rows
        assert rel.sum() == pytest.approx(1.0, abs=1e-5)
    assert (__import__("pathlib").Path(image_run) / "viz" / f"{method}.png").stat().st_size > 1000


def test_distance_and_head_importance_tables(image_run):
    assert main(["viz", image_run, "--method", "distance"]) == 0
    dist = np.array(_json(image_run, "distance")["distance"])
    assert dist.shape == (2, 2)
    assert ((dist > 0) & (dist <= np.hypot(6, 6))).all()      # pixels between 2-px patch centres on 8x8
    assert main(["viz", image_run, "--method", "heads"]) == 0
    imp = np.array(_json(image_run, "heads")["importance"])
    assert imp.shape == (2, 2) and (imp >= 0).all() and imp.max() > 0


def test_gradient_path_reproduces_the_model_output(image_run):
    subject = open_subject(image_run, index=3)
    out, maps = maps_with_gradients(subject.model, subject.run)
    with torch.no_grad():
        torch.testing.assert_close(out, subject.run(), rtol=1e-5, atol=1e-5)
    out[0, subject.target].backward()
    assert len(maps) == 2 and all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)


def test_text_rollout_reads_the_last_position(text_run):
    assert main(["viz", text_run, "--method", "rollout", "--text", "And God said"]) == 0
    rel = np.array(_json(text_run, "rollout")["relevance"])
    assert rel.shape == (12,) and rel.sum() == pytest.approx(1.0, abs=1e-5)  # a causal row of the rollout
    for method in ("raw", "grad_rollout", "distance", "heads"):
        assert main(["viz", text_run, "--method", method, "--text", "And God said"]) == 0
    assert _json(text_run, "distance")["unit"] == "tokens"


def test_an_image_file_of_the_run_size_is_explained(image_run, tmp_path):
    path = tmp_path / "digit.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(path)
    assert main(["viz", image_run, "--method", "rollout", "--image", str(path), "--output", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "rollout.png").is_file()


def test_bad_inputs_are_one_line(image_run, text_run, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.new("L", (9, 9)).save(big)
    cases = [
        ([image_run, "--method", "rollout", "--image", str(tmp_path / "none.png")], "does not exist"),
        ([image_run, "--method", "rollout", "--image", str(big)], "is 9x9 pixels but the run's model reads 8x8"),
        ([image_run, "--method", "rollout", "--text", "hi"], "classifies images: give --image FILE or --index N"),
        ([image_run, "--method", "raw", "--layer", "7"], "layer 7 does not exist"),
        ([image_run, "--method", "raw", "--head", "5"], "head 5 does not exist: layer 1 has 2 heads"),
        ([image_run, "--method", "rollout", "--index", "99999"], "out of range"),
        ([image_run, "--method", "rollout", "--discard-ratio", "1.5"], "expected a finite number in [0, 1), got '1.5'"),
        ([text_run, "--method", "rollout", "--text", "x" * 40], "the text is 40 tokens but the model's context is 32"),
        ([text_run, "--method", "rollout", "--index", "1"], "is a language model: explain a text with --text"),
        ([text_run, "--method", "sideways", "--text", "hi"], "invalid choice: 'sideways'"),
        ([str(tmp_path), "--method", "rollout"], "is not a run directory"),
    ]
    for argv, message in cases:
        try:
            code = main(["viz", *argv])
        except SystemExit as e:  # argparse's own errors (a method that does not exist)
            code = e.code
        assert code != 0
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (argv, err)


def test_a_model_without_attention_weights_is_a_clear_error(tmp_path, capsys):
    run = _train(tmp_path / "van", {"name": "van-tiny", "image_size": 8, "num_channels": 1,
                                    "stage_embed": [[3, 1, 1], [3, 2, 1]]}, {"dataset": "digits", "batch_size": 32})
    for method, message in [("rollout", "no token-to-token attention weights"), ("heads", "no attention heads"),
                            ("grad_rollout", "a VAN has no attention layers")]:
        assert main(["viz", run, "--method", method]) != 0
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("pooling,shape", [("mean", (16, 4)), ("cls", (17, 5))])
def test_cvt_with_strided_keys_is_explained(tmp_path, pooling, shape):
    # CvT's keys and values come from a stride-2 convolution: (T, S) maps with S < T, placed on the query grid
    # (4x4 queries, 2x2 keys, and the class token in front of both with pooling=cls).
    run = _train(tmp_path / "cvt", {"name": "cvt-tiny", "image_size": 8, "num_channels": 1, "kv_stride": 2,
                                    "pooling": pooling, "stage_embed": [[3, 1, 1], [3, 2, 1]]},
                 {"dataset": "digits", "batch_size": 32})
    subject = open_subject(run, index=2)
    out, maps = maps_with_gradients(subject.model, subject.run)
    with torch.no_grad():
        torch.testing.assert_close(out, subject.run(), rtol=1e-5, atol=1e-5)
    assert maps[-1].shape[-2:] == shape
    for method in ("rollout", "grad_rollout", "raw"):
        assert main(["viz", run, "--method", method, "--index", "2"]) == 0
        rel = np.array(_json(run, method)["relevance"])
        assert rel.shape == (16,) and (rel >= 0).all() and rel.max() > 0
    assert "strided keys" in _json(run, "rollout")["note"]
    assert main(["viz", run, "--method", "distance"]) == 0
    dist = _json(run, "distance")["distance"]
    assert [len(r) for r in dist] == [b.attn.attn.num_heads for s in subject.body.stages for b in s.blocks]
    assert all(0 <= d <= np.hypot(7, 7) for r in dist for d in r)


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("viz") / "enc", {"name": "encoder-tiny", "max_seq_len": 64},
                  {"dataset": "sentiment", "options": {"max_len": 64}, "batch_size": 16})


def test_text_classifier_is_explained_from_a_text_or_a_test_example(sentiment_run, capsys):
    assert main(["viz", sentiment_run, "--method", "rollout", "--text", "a gem of a film"]) == 0
    rec = _json(sentiment_run, "rollout")
    rel = np.array(rec["relevance"])
    assert rel.shape == (15,) and rel.sum() == pytest.approx(1.0, abs=1e-5)   # one per byte; mean pooling: mean row
    assert rec["input"].startswith("the text, predicted ")
    for method in ("grad_rollout", "raw", "distance", "heads"):
        assert main(["viz", sentiment_run, "--method", method, "--index", "3"]) == 0
    assert _json(sentiment_run, "distance")["unit"] == "tokens"
    assert np.array(_json(sentiment_run, "heads")["importance"]).max() > 0
    subject = open_subject(sentiment_run, index=3)
    out, maps = maps_with_gradients(subject.model, subject.run)
    with torch.no_grad():
        torch.testing.assert_close(out, subject.run(), rtol=1e-5, atol=1e-5)
    assert subject.inputs.shape[1] == len(subject.shown) and "<pad>" not in subject.shown   # its real tokens only
    for argv, message in [(["--text", "x" * 80], "the text is 80 tokens (UTF-8 bytes) but the run's inputs hold 64"),
                          (["--index", "99999"], "out of range: the test split has"),
                          (["--text", ""], "the text is empty")]:
        assert main(["viz", sentiment_run, "--method", "rollout", *argv]) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


@pytest.mark.parametrize("name", ["tnt-tiny", "t2t-vit-tiny"])
def test_both_rollouts_read_the_same_layers(tmp_path, name):
    """TNT's inner (pixel) kernels and T2T-ViT's tokens-to-token kernels are not among the maps of either
    rollout: both read every outer layer, with no 'last stage' note on a model that has one grid."""
    config = {"model": {"name": name, "image_size": 8, "num_channels": 1},
              "data": {"dataset": "digits", "batch_size": 16},
              "train": {**TRAIN, "steps": 3, "eval_every": 3, "checkpoint_every": 3, "run_dir": str(tmp_path / "r")}}
    train(build_config(config), progress=False)
    records = {}
    for method in ("rollout", "grad_rollout"):
        assert main(["viz", str(tmp_path / "r"), "--method", method]) == 0
        records[method] = _json(tmp_path / "r", method)
    layers = build_config(config).model.num_layers
    assert records["rollout"]["layers"] == records["grad_rollout"]["layers"] == list(range(layers))
    assert not any("last stage" in r["note"] for r in records.values())


def test_sret_slices_are_placed_on_the_grid_for_distances(tmp_path):
    """SReT's sliced maps come as whole-stage maps (the slices on the diagonal), so distances are per stage grid."""
    run = _train(tmp_path / "sret", {"name": "sret-tiny", "image_size": 8, "num_channels": 1,
                                     "stage_embed": [[3, 1, 1]]}, {"dataset": "digits", "batch_size": 16})
    assert main(["viz", run, "--method", "distance"]) == 0
    dist = _json(run, "distance")["distance"]
    assert [len(r) for r in dist] == [2, 2, 4, 4] and all(0 < d <= np.hypot(7, 7) for r in dist for d in r)
