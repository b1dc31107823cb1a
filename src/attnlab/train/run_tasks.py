"""``attnlab eval`` for runs that trained on a feed (:mod:`.task_feeds`): a seq2seq, masked-LM or suite dataset run.

A seq2seq run is scored by greedy decoding of the test split (exact match and character error rate, plus the
teacher-forced loss); a classifier by loss, accuracy, top-5 accuracy (more than 5 classes) and its confusion
matrix (also drawn as ``confusion_matrix.png``), an image classifier optionally with test-time augmentation
(``tta="flip"``: the mean of the class probabilities of each image and its mirror image); a forecaster by
MSE/MAE over every test window next to the closed-form baselines
(:func:`~attnlab.train.forecast_feed.forecast_report`); the other kinds by their objective's metrics over the
test split (masked LM: fixed masked validation windows).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import RunConfig
from ..objectives import objective_step
from ..objectives.seq2seq import character_error_rate
from .build import build_for_config, step_options
from .checkpoint import latest_checkpoint, load_weights
from .distributed import resolve_device
from .feeds import DatasetFeed
from .precision import autocast, resolve_precision
from .rundir import kept_tokenizer
from .task_feeds import feed_for_config

MLM_EVAL_BATCHES = 50  # masked validation windows scored by default
TTA_MODES = ("flip",)  # test-time augmentations of image classifiers


def result_suffix(split: str, tta: str | None, max_batches: int | None) -> str:
    """What tells an evaluation's files apart: ``""`` for the whole default split (``eval.json``), else
    ``-train``, ``-<tta>`` and ``-first<N>`` (the first ``N`` batches only) in that order, so that a partial or
    another split's evaluation never overwrites the full one."""
    return ("-train" if split == "train" else "") + (f"-{tta}" if tta else "") + (
        f"-first{max_batches}" if max_batches is not None else "")


@torch.no_grad()
def evaluate_task_run(run_dir: Path, cfg: RunConfig, batch_size: int | None, max_batches: int | None,
                      device: str, progress: bool, save: bool = True, tta: str | None = None,
                      split: str = "val") -> dict:
    """The evaluation of a feed run (see the module docstring) as a JSON-ready dict; with ``save`` a classifier's
    confusion matrix is drawn into ``RUN/confusion_matrix<suffix>.png`` (:func:`result_suffix`). ``split="train"``
    scores a classifier on its training split (without augmentation); ``"val"`` means the test split here.

    Raises:
        FileNotFoundError / CheckpointError: no (intact) checkpoint.
        ValueError: ``tta`` given for a run that is not an image classifier; ``split="train"`` for a run that is
            not a classifier.
    """
    feed = feed_for_config(cfg, kept_tokenizer(run_dir, cfg.data.tokenizer))
    dev = resolve_device(device)
    _, model, resolved = build_for_config(cfg, dev, feed)
    classifier = feed.kind == "classify" and resolved.objective.name == "classify"
    if split == "train" and not classifier:
        raise ValueError(f"--split train scores language models and classifiers; this {feed.kind} run "
                         f"({resolved.objective.name}) is scored on its test split: leave out --split")
    if tta is not None:
        _check_tta(tta, feed, resolved.objective.name)
    ckpt = latest_checkpoint(run_dir)
    load_weights(model, ckpt)
    model.eval()
    precision = resolve_precision(cfg.train.precision, dev)
    bs = batch_size or cfg.data.batch_size
    head = {"split": "test" if feed.kind != "mlm" else "val", "step": ckpt.step, "precision": precision,
            "objective": resolved.objective.name}
    if feed.kind == "seq2seq":
        return {**head, **_decode_split(model, feed.dataset, bs, max_batches, dev, precision, progress)}
    if feed.kind == "irregular":  # accuracy over every test sample
        from .irregular_feed import irregular_report

        return {**head, **irregular_report(model, feed, bs, dev)}
    if feed.kind == "forecast" and resolved.objective.name == "forecast":  # every test window once, baselines too
        from .forecast_feed import forecast_report

        return {**head, **forecast_report(model, feed.data, bs, dev)}
    if feed.kind == "forecast":  # masked-patch pretraining: the masked reconstruction error of the validation windows
        torch.manual_seed(0)  # the same masks at every evaluation
        losses = [float(objective_step("patch_mask")(model, {k: v.to(dev) for k, v in b.items()})[0]) * len(b["inputs"])
                  for b in feed.eval_batches(bs, 0)]
        return {**head, "split": "val", "masked_mse": sum(losses) / len(feed.data.val), "windows": len(feed.data.val)}
    if classifier:  # (ssast pretrains on the same clips)
        plot = run_dir / f"confusion_matrix{result_suffix(split, tta, max_batches)}.png" if save else None
        if tta is not None:
            head["tta"] = tta
        head["split"] = "train" if split == "train" else "test"
        return {**head, **_classify_split(model, feed, bs, max_batches, dev, precision, progress, plot, tta,
                                          head["split"])}
    step_fn = objective_step(resolved.objective.name, **step_options(resolved.objective))
    n = max_batches or (MLM_EVAL_BATCHES if feed.kind == "mlm" else math.ceil(len(feed.dataset.test) / bs))
    sums: dict[str, float] = {}
    torch.manual_seed(0)  # masks a model draws itself (SSAST) are the same at every evaluation
    batches = feed.eval_batches(bs, n, split="test") if isinstance(feed, DatasetFeed) else feed.eval_batches(bs, n)
    for batch in tqdm(batches, desc="eval", disable=not progress, dynamic_ncols=True):
        with autocast(precision, dev):
            _, metrics = step_fn(model, {k: v.to(dev) for k, v in batch.items()})
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    means = {k: v / len(batches) for k, v in sums.items() if not k.endswith(("tokens", "positions", "examples"))}
    return {**head, **means, "batches": len(batches)}


def check_tta_mode(tta: str) -> None:
    """Raises ValueError unless ``tta`` is one of :data:`TTA_MODES`."""
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose from {', '.join(TTA_MODES)}")


def tta_refused(tta: str, what: str) -> ValueError:
    """The error for test-time augmentation asked of a run that does not classify images (``what`` says what the
    run does instead)."""
    return ValueError(f"test-time augmentation ({tta}) applies to image classification runs; this run {what}: "
                      f"leave out --tta")


def _check_tta(tta: str, feed, objective: str) -> None:
    """Raises ValueError unless the run classifies images (the feed's dataset has an ``image_shape``)."""
    check_tta_mode(tta)
    dataset = getattr(feed, "dataset", None)  # forecast feeds hold windows, not a suite dataset
    if feed.kind != "classify" or objective != "classify" or getattr(dataset, "image_shape", None) is None:
        raise tta_refused(tta, f"trains {objective} on {getattr(dataset, 'name', 'its dataset')!r}, not image "
                               f"classification")


def _log_probs(model, batch: dict, tta: str | None) -> torch.Tensor:
    """``(B, classes)`` log class probabilities; with ``tta="flip"`` those of the mean probability of each image
    and its mirror image (left-right), the usual test-time augmentation of models trained with ``flip: true``."""
    from ..objectives import model_outputs

    z = model_outputs("classify", model, batch).float().log_softmax(-1)
    if tta is None:
        return z
    mirrored = model_outputs("classify", model, {**batch, "pixels": batch["pixels"].flip(-1)}).float()
    return torch.logsumexp(torch.stack([z, mirrored.log_softmax(-1)]), dim=0) - math.log(2.0)


def _classify_split(model, feed, bs: int, max_batches: int | None, dev, precision: str, progress: bool,
                    plot: Path | None, tta: str | None = None, split: str = "test") -> dict:
    """Loss, accuracy, top-5 accuracy (more than 5 classes) and the confusion matrix over ``split``."""
    from ..viz.confusion import confusion_matrix, plot_confusion_matrix

    dataset = feed.dataset
    n = max_batches or math.ceil(len(getattr(dataset, split)) / bs)
    logits, targets = [], []
    for batch in tqdm(feed.eval_batches(bs, n, split=split), desc=f"eval {split}", disable=not progress,
                      dynamic_ncols=True):
        with autocast(precision, dev):
            logits.append(_log_probs(model, {k: v.to(dev) for k, v in batch.items()}, tta).cpu())
        targets.append(batch["targets"])
    z, y = torch.cat(logits), torch.cat(targets)
    out = {"loss": float(torch.nn.functional.cross_entropy(z, y)), "accuracy": float((z.argmax(-1) == y).float().mean()),
           "examples": int(y.numel())}
    if z.shape[1] > 5:
        out["top5_accuracy"] = float((z.topk(5, dim=-1).indices == y[:, None]).any(-1).float().mean())
    counts = confusion_matrix(y.numpy(), z.argmax(-1).numpy(), z.shape[1])
    out["confusion_matrix"] = counts.tolist()
    if plot is not None:
        try:
            plot_confusion_matrix(counts, dataset.label_names, plot, title=f"{dataset.name} ({split}): accuracy "
                                                                             f"{out['accuracy']:.3f}")
            out["confusion_png"] = str(plot)
        except OSError:
            pass  # a read-only run folder: the numbers are still returned (and printed)
    return out


def _decode_split(model, dataset, bs: int, max_batches: int | None, dev, precision: str, progress: bool) -> dict:
    """Greedy decoding of ``dataset.test`` (``max_batches`` batches of ``bs`` rows at most)."""
    from ..infer.seq2seq import generate_seq2seq

    split = dataset.test
    rows = len(split) if max_batches is None else min(len(split), max_batches * bs)
    steps = split.tgt_out.shape[1]
    predictions, references, loss_sum = [], [], 0.0
    step_fn = objective_step("seq2seq")
    for start in tqdm(range(0, rows, bs), desc="decode test", disable=not progress, dynamic_ncols=True):
        batch = {k: v.to(dev) for k, v in split.batch(slice(start, min(start + bs, rows))).items()}
        with autocast(precision, dev):
            _, metrics = step_fn(model, batch)
            out = generate_seq2seq(model, batch["src"], bos_id=dataset.bos_id, eos_id=dataset.eos_id,
                                   max_new_tokens=steps, src_key_padding_mask=batch["src_key_padding_mask"])
        loss_sum += float(metrics["loss"]) * batch["src"].shape[0]
        for row in out.tolist():
            predictions.append(row[: row.index(dataset.eos_id)] if dataset.eos_id in row else row)
        references.extend(split.targets(slice(start, min(start + bs, rows))))
    exact = sum(p == r for p, r in zip(predictions, references)) / max(rows, 1)
    samples = [{"source": dataset.decode(split.src[i].tolist()), "prediction": dataset.decode(predictions[i]),
                "reference": dataset.decode(references[i])} for i in range(min(3, rows))]
    return {"loss": loss_sum / max(rows, 1), "exact_match": exact,
            "cer": character_error_rate(predictions, references), "examples": rows, "samples": samples}
