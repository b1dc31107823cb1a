"""Image classification through `attnlab train` / `attnlab eval`: a ViT on image datasets, augmentation that resumes
exactly, the confusion matrix, attention maps from pixels, and the errors for models that do not fit the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attnlab.config import build_config
from attnlab.models import create_model
from attnlab.objectives import model_outputs
from attnlab.train import evaluate_run, train
from attnlab.train.build import build_for_config
from attnlab.train.checkpoint import latest_checkpoint, load_weights
from attnlab.train.task_feeds import AugmentedImageFeed, feed_for_config
from attnlab.viz.confusion import confusion_matrix

MODEL = {"name": "vit-digits", "dim": 32, "num_layers": 2, "num_heads": 2}
TRAIN = {"lr": 3e-3, "warmup_steps": 10, "eval_batches": 3, "precision": "fp32", "weight_decay": 0.0}


def digits_config(run_dir, steps=150, model=None, **options):
    return build_config({"model": {**MODEL, **(model or {})}, "data": {"dataset": "digits", "options": options,
                                                                       "batch_size": 64},
                         "train": {"steps": steps, "eval_every": 50, "checkpoint_every": steps,
                                   "run_dir": str(run_dir), **TRAIN}})


def test_vit_trains_on_digits_and_eval_draws_the_confusion_matrix(tmp_path):
    run = tmp_path / "vit"
    train(digits_config(run), progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_accuracy" in r]
    assert evals[-1]["val_loss"] < 0.8 * evals[0]["val_loss"] and evals[-1]["val_accuracy"] > 0.4
    assert all(r["val_accuracy"] <= r["val_top5_accuracy"] <= 1.0 for r in evals)  # 10 classes: top-5 logged
    assert (run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # drawn when training ends
    result = evaluate_run(run, progress=False)
    counts = np.asarray(result["confusion_matrix"])
    assert counts.shape == (10, 10) and counts.sum() == result["examples"] == 359
    assert result["accuracy"] == pytest.approx(np.trace(counts) / counts.sum())
    assert result["accuracy"] <= result["top5_accuracy"] <= 1.0
    assert (run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # test-time augmentation: the mean probabilities of each image and its mirror, written beside the plain result
    flipped = evaluate_run(run, progress=False, tta="flip")
    cfg = digits_config(run)
    feed = feed_for_config(cfg)
    _, model, _ = build_for_config(cfg, torch.device("cpu"), feed)
    load_weights(model, latest_checkpoint(run))
    with torch.no_grad():
        x, y = feed.dataset.test.inputs, feed.dataset.test.targets
        p = (model_outputs("classify", model.eval(), {"pixels": x}).softmax(-1)
             + model_outputs("classify", model, {"pixels": x.flip(-1)}).softmax(-1)) / 2
    assert flipped["tta"] == "flip" and flipped["examples"] == 359
    assert flipped["accuracy"] == pytest.approx(float((p.argmax(-1) == y).float().mean()), abs=1e-6)
    assert flipped["loss"] == pytest.approx(float(-p[torch.arange(len(y)), y].log().mean()), rel=1e-4)
    assert flipped["accuracy"] != result["accuracy"] or flipped["loss"] != pytest.approx(result["loss"], rel=1e-4)
    assert json.loads((run / "eval-flip.json").read_text())["accuracy"] == flipped["accuracy"]
    assert json.loads((run / "eval.json").read_text())["accuracy"] == result["accuracy"]
    assert (run / "confusion_matrix-flip.png").exists()
    # the training split (not augmented), beside the test evaluation, with its own confusion matrix
    trained = evaluate_run(run, progress=False, split="train")
    assert trained["split"] == "train" and trained["examples"] == len(feed.dataset.train) == 1438
    assert np.asarray(trained["confusion_matrix"]).sum() == 1438 and (run / "confusion_matrix-train.png").exists()
    assert json.loads((run / "eval-train.json").read_text()) == trained
    assert json.loads((run / "eval.json").read_text())["split"] == "test"
    with pytest.raises(ValueError, match="unknown test-time augmentation 'crop'; choose from flip"):
        evaluate_run(run, progress=False, save=False, tta="crop")


def test_augmented_batches_are_a_function_of_seed_and_step():
    cfg = digits_config("unused", crop_padding=1, flip=True)
    feed = feed_for_config(cfg)
    assert isinstance(feed, AugmentedImageFeed)
    a, b = feed.sampler(16, seed=5), feed.sampler(16, seed=5)
    first = [a.next() for _ in range(3)]
    b.load_state_dict({**a.state_dict(), "position": 1})
    assert torch.equal(b.next()["pixels"], first[1]["pixels"])
    plain = feed_for_config(digits_config("unused")).sampler(16, seed=5)
    plain_first = plain.next()
    assert torch.equal(plain_first["targets"], first[0]["targets"])  # same rows...
    assert not torch.equal(plain_first["pixels"], first[0]["pixels"])  # ...shifted and flipped


def test_random_erasing_alone_turns_on_augmentation_and_resumes_exactly():
    feed = feed_for_config(digits_config("unused", erase=1.0))
    assert isinstance(feed, AugmentedImageFeed)
    a, b = feed.sampler(16, seed=2), feed.sampler(16, seed=2)
    first = [a.next() for _ in range(2)]
    b.load_state_dict({**a.state_dict(), "position": 1})
    assert torch.equal(b.next()["pixels"], first[1]["pixels"])
    plain = feed_for_config(digits_config("unused")).sampler(16, seed=2).next()["pixels"]
    changed = (plain != first[0]["pixels"]).flatten(1)
    assert changed.any(1).all()  # every image got a rectangle (erase=1.0)...
    assert (changed.float().mean(1) <= 0.4 + 0.1).all()  # ...of at most ~40% of its 64 pixels


def test_confusion_matrix_counts():
    counts = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 2, 1, 2]), 3)
    assert counts.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def test_attention_maps_from_pixels_are_the_softmax_of_the_first_layer():
    torch.manual_seed(0)
    model = create_model("vit-tiny").eval()
    pixels = torch.rand(2, 3, 32, 32)
    maps = model.attention_maps(pixels)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 64, 64)
    block = model.blocks[0]
    x = block.attn_norm(model.embed(pixels))  # (B, 64, 64): pre-norm input of the first attention
    q = block.attn.q_proj(x).view(2, 64, 4, 16).transpose(1, 2)
    k = block.attn.k_proj(x).view(2, 64, 4, 16).transpose(1, 2)
    torch.testing.assert_close(maps[0], (q @ k.transpose(-1, -2) / 4.0).softmax(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, 64))


@pytest.mark.parametrize("change, message", [
    ({"model": {"image_size": 16, "max_seq_len": 64}}, r"the dataset's images are 1x8x8 but the model reads "
                                                       r"1x16x16: set model.image_size=8 model.num_channels=1"),
    ({"model": {"num_channels": 3}}, r"images are 1x8x8 but the model reads 3x8x8: set model.image_size=8 "
                                     r"model.num_channels=1"),
    ({"model": {"name": "encoder-tiny"}}, "an image dataset needs an image model"),
    ({"model": {"num_classes": 3}}, "model.num_classes=3 but dataset 'digits' has 10 classes, which set the head; "
                                    "remove model.num_classes"),
])
def test_models_that_do_not_fit_images_are_refused(tmp_path, change, message):
    cfg = digits_config(tmp_path / "r", steps=1, model=change["model"])
    with pytest.raises(ValueError, match=message):
        train(cfg, progress=False)


def test_an_image_model_on_tokens_is_refused(tmp_path):
    cfg = build_config({"model": MODEL, "data": {"dataset": "listops", "options": {"num_train": 20, "num_test": 4}},
                        "train": {"steps": 1, "run_dir": str(tmp_path / "r"), **TRAIN}})
    with pytest.raises(ValueError, match="holds tokens, not images, audio or files: a ViT"):
        train(cfg, progress=False)


def test_the_end_of_training_confusion_counts_are_the_validation_predictions(tmp_path):
    from attnlab.train import distributed as D
    from attnlab.train.evaluation import confusion_counts

    cfg = digits_config(tmp_path / "c", steps=5)
    feed = feed_for_config(cfg)
    _, model, _ = build_for_config(cfg, torch.device("cpu"), feed)
    batches = feed.eval_batches(64, 3)
    counts = confusion_counts(model, batches, "fp32", D.DistInfo(device=torch.device("cpu")), 10)
    with torch.no_grad():
        z = torch.cat([model_outputs("classify", model.eval(), b) for b in batches])
    y = torch.cat([b["targets"] for b in batches])
    assert counts.tolist() == confusion_matrix(y.numpy(), z.argmax(-1).numpy(), 10).tolist()
    assert counts.sum() == 192


def test_a_relative_image_folder_is_stored_absolute_so_eval_and_viz_run_from_anywhere(tmp_path, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog")):
        (tmp_path / "work" / "imgs" / name).mkdir(parents=True)
        for i in range(5):
            pixels = (rng.random((10, 10, 3)) * 60 + 180 * c).astype(np.uint8)  # resized to 8x8 for training
            Image.fromarray(pixels).save(tmp_path / "work" / "imgs" / name / f"{i}.png")
    monkeypatch.chdir(tmp_path / "work")
    cfg = build_config({"model": {**MODEL, "image_size": 8, "num_channels": 3, "patch_size": 2},
                        "data": {"dataset": "image_folder", "options": {"path": "imgs", "image_size": 8},
                                 "batch_size": 4},
                        "train": {"steps": 2, "eval_every": 2, "checkpoint_every": 2, "run_dir": "run", **TRAIN}})
    train(cfg, progress=False)
    stored = build_config(__import__("yaml").safe_load((tmp_path / "work" / "run" / "config.yaml").read_text()))
    assert stored.data.options["path"] == str(tmp_path / "work" / "imgs")
    train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 3})}), resume=True, progress=False)
    monkeypatch.chdir(tmp_path)  # elsewhere: the run still finds its images
    assert evaluate_run(tmp_path / "work" / "run", progress=False, save=False)["examples"] == 2
    from attnlab.cli import main  # an image of the folder is explained at its size, resized as training resized it

    assert main(["viz", str(tmp_path / "work" / "run"), "--method", "raw", "--image",
                 str(tmp_path / "work" / "imgs" / "dog" / "0.png")]) == 0
