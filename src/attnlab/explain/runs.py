"""``attnlab viz RUN``: explain one input of a trained run and write the figures.

Image classifiers (every vision model trained by ``attnlab train``) take an image file of the run's size (or a
test-split example by index); language-model runs take a text. Methods:

- ``rollout``, ``grad_rollout``, ``raw``: relevance per patch (an overlay on the image) or per token (a token heat
  map), see :mod:`.explain`; ``raw`` also draws every head of its layer;
- ``distance``: mean attention distance per layer and head (pixels for images, tokens for text);
- ``heads``: head importance, the change of the loss when one head is zeroed, on a fixed test batch of 256 images
  (images) or on the text itself (language models).

Each writes ``OUT/<method>.png`` and ``OUT/<method>.json`` (``OUT`` defaults to ``RUN/viz``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.capabilities import CapabilityError
from ..core.io import write_json
from ..viz.attention import FUSIONS, attention_shells, head_importance, key_placement, mean_attention_distance
from ..viz.figures import layer_head_png, overlay_png, ragged_table, tokens_png
from .maps import MAP_METHODS, map_shells, maps_with_gradients, model_maps, relevance

METHODS = MAP_METHODS + ("distance", "heads")
HEADS_BATCH = 256


@dataclass
class Subject:
    """What is explained: the model, its input, how to run it, and how to show the input."""

    kind: str                       # "image" or "text"
    model: nn.Module
    body: nn.Module
    inputs: Tensor                  # (1, C, H, W) pixels or (1, T) ids
    run: Callable[[], Tensor]       # the scores: (1, classes) or (1, T, vocab)
    target: int                     # the class (image) or the next token (text) whose score is explained
    loss: Callable[[nn.Module], Tensor]
    shown: object                   # (C, H, W) image in [0, 1], or the tokens as strings
    causal: bool
    label: str


def image_classifier(run_dir: str | Path, device: str = "auto") -> tuple[nn.Module, object]:
    """The trained classifier of an image run (eval mode) and its dataset (normalised splits, ``image_norm``).

    Raises:
        FileNotFoundError: not a run directory, or no checkpoint.
        ValueError: a run that did not classify images.
    """
    from ..config import load_config
    from ..train.distributed import resolve_device
    from ..train.rundir import kept_tokenizer
    from ..train.task_feeds import feed_for_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml); train one with `attnlab train`")
    cfg = load_config(run_dir / "config.yaml")
    feed = feed_for_config(cfg, kept_tokenizer(run_dir, cfg.data.tokenizer))
    if feed is None or getattr(getattr(feed, "dataset", None), "image_shape", None) is None:
        raise ValueError(f"{run_dir} did not train an image classifier ({cfg.model.name} on {cfg.data.dataset!r})")
    return _load_classifier(run_dir, cfg, feed, resolve_device(device)), feed.dataset


def _load_classifier(run_dir: Path, cfg, feed, device) -> nn.Module:
    from ..train.build import build_for_config
    from ..train.checkpoint import latest_checkpoint, load_weights

    _, model, _ = build_for_config(cfg, device, feed)
    load_weights(model, latest_checkpoint(run_dir))
    return model.eval()


def _image_subject(run_dir: Path, cfg, feed, image: str | None, index: int | None, device) -> Subject:
    model, data = _load_classifier(run_dir, cfg, feed, device), feed.dataset
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in data.image_norm)
    if image is not None:
        resize = data.name == "image_folder"  # its training images were resized so: an image of the folder fits
        pixels, label = (read_image(image, data.image_shape, resize) - mean) / std, Path(image).name
    else:
        i = 0 if index is None else index
        if not 0 <= i < len(data.test.inputs):
            raise ValueError(f"--index {i} is out of range: the test split has {len(data.test.inputs)} images")
        pixels, label = data.test.inputs[i], f"test image {i} (label {data.label_names[int(data.test.targets[i])]})"
    x = pixels[None].to(device)
    with torch.no_grad():
        target = int(model(x).argmax(-1))
    fixed = data.test.inputs[:HEADS_BATCH].to(device), data.test.targets[:HEADS_BATCH].to(device)
    return Subject("image", model, model.body, x, lambda: model(x), target,
                   lambda m: F.cross_entropy(m(fixed[0]), fixed[1]), (pixels * std + mean).clamp(0, 1).numpy(),
                   False, f"{label}, predicted {data.label_names[target]}")


def read_image(path: str, shape: tuple[int, int, int], resize: bool = False) -> Tensor:
    """An image file -> ``(C, H, W)`` floats in [0, 1] of exactly ``shape``: resized (bilinear, as ``image_folder``
    resizes its training images) with ``resize``, else it must have that size already.

    Raises:
        ValueError: a missing or unreadable file, or (without ``resize``) an image of another size.
    """
    from PIL import Image, UnidentifiedImageError

    C, H, W = shape
    if not Path(path).is_file():
        raise ValueError(f"image {path!r} does not exist")
    try:
        with Image.open(path) as img:
            if resize and img.size != (W, H):
                img = img.convert("L" if C == 1 else "RGB").resize((W, H), Image.BILINEAR)
            if img.size != (W, H):
                raise ValueError(f"image {path!r} is {img.size[0]}x{img.size[1]} pixels but the run's model reads "
                                 f"{W}x{H}; resize it first")
            pixels = np.asarray(img.convert("L" if C == 1 else "RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path!r} ({e}); give a PNG or JPEG") from None
    return torch.from_numpy(pixels[None] if C == 1 else pixels.transpose(2, 0, 1).copy())


def _text_subject(run_dir: Path, text: str, device) -> Subject:
    from ..train.run import load_run

    run = load_run(run_dir, device=str(device))
    if not text:
        raise ValueError("--text is empty; give the text to explain")
    ids = torch.as_tensor(run.tokenizer.encode(text), dtype=torch.long)
    limit = run.model.cfg.max_seq_len
    if len(ids) > limit:
        raise ValueError(f"the text is {len(ids)} tokens but the model's context is {limit}; shorten it")
    x = ids[None].to(device)
    with torch.no_grad():
        target = int(run.model(x)[0, -1].argmax())

    def loss(m: nn.Module) -> Tensor:
        if x.shape[1] < 2:
            raise ValueError("head importance on a text needs at least two tokens (it scores next-token predictions)")
        logits = m(x[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), x[0, 1:])

    tokens = [run.tokenizer.decode([int(i)]) for i in ids]
    return Subject("text", run.model, run.model, x, lambda: run.model(x)[:, -1], target, loss, tokens,
                   bool(getattr(run.model, "causal", True)), f"next token {run.tokenizer.decode([target])!r}")


def _token_subject(run_dir: Path, cfg, feed, text: str | None, index: int | None, device) -> Subject:
    """A sequence classifier (encoder or GPT body, mean pooling) on a text or a test example: relevance is read as
    the mean over rows, as the pooling averages every position."""
    from ..data.text.sentiment import encode_text, token_text

    model, data = _load_classifier(run_dir, cfg, feed, device), feed.dataset
    if text is not None:
        if data.text_codec != "bytes":
            raise ValueError(f"{data.name!r} has no text encoding: explain one of its test examples with --index N")
        ids, label = encode_text(text, data.seq_len, bool(data.options.get("add_cls"))), "the text"
    else:
        i = 0 if index is None else index
        if not 0 <= i < len(data.test.inputs):
            raise ValueError(f"--index {i} is out of range: the test split has {len(data.test.inputs)} examples")
        mask = data.test.key_padding_mask
        ids = data.test.inputs[i] if mask is None else data.test.inputs[i][mask[i]]  # its real tokens
        label = f"test example {i} (label {data.label_names[int(data.test.targets[i])]})"
    x = ids[None].to(device)
    with torch.no_grad():
        target = int(model(x).argmax(-1))
    n = min(HEADS_BATCH, len(data.test.inputs))
    fixed = data.test.subset(slice(0, n)).to(device)
    loss = (lambda m: F.cross_entropy(m(fixed.inputs, key_padding_mask=fixed.key_padding_mask), fixed.targets))
    shown = [token_text(int(t)) for t in ids] if data.text_codec == "bytes" else [str(int(t)) for t in ids]
    return Subject("text", model, model.body, x, lambda: model(x), target, loss, shown, False,
                   f"{label}, predicted {data.label_names[target]}")


def open_subject(run_dir: str | Path, image: str | None = None, index: int | None = None, text: str | None = None,
                 device: str = "auto") -> Subject:
    """Load ``run_dir``'s model and the input to explain.

    Raises:
        FileNotFoundError: not a run directory, or no checkpoint.
        ValueError: an image given to a text run or text to an image run, bad image or text, a run of another kind.
    """
    from ..config import load_config
    from ..train.distributed import resolve_device
    from ..train.rundir import kept_tokenizer
    from ..train.task_feeds import feed_for_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml); train one with `attnlab train`")
    cfg, dev = load_config(run_dir / "config.yaml"), resolve_device(device)
    feed = feed_for_config(cfg, kept_tokenizer(run_dir, cfg.data.tokenizer))
    if feed is None:
        if image is not None or index is not None:
            raise ValueError(f"{run_dir} is a language model: explain a text with --text, not an image")
        return _text_subject(run_dir, text or "", dev)
    data = getattr(feed, "dataset", None)
    if data is not None and data.kind == "classify" and not data.whole_examples and data.grid is None:
        return _token_subject(run_dir, cfg, feed, text, index, dev)
    if getattr(data, "image_shape", None) is None:
        raise ValueError(f"attnlab viz explains image and text classifiers and language models; {run_dir} trained "
                         f"{cfg.model.name} on {cfg.data.dataset!r} ({feed.kind})")
    if text is not None:
        raise ValueError(f"{run_dir} classifies images: give --image FILE or --index N, not --text")
    return _image_subject(run_dir, cfg, feed, image, index, dev)


def content_grid(body: nn.Module, tokens: int) -> tuple[tuple[int, int], int]:
    """The grid of an image model whose attention map has ``tokens`` tokens, and its number of prefix tokens."""
    grids = list(getattr(body, "grids", [])) + [(s, s) for s in getattr(body, "sides", [])]
    grids += [body.grid] if hasattr(body, "grid") else []
    for prefix in (0, 1, 2):
        for rows, cols in grids:
            if rows * cols == tokens - prefix:
                return (rows, cols), prefix
    raise ValueError(f"cannot place an attention map of {tokens} tokens on a grid of this {type(body).__name__}")


def explain(subject: Subject, method: str, out_dir: str | Path, layer: int | None = None, head: int | None = None,
            head_fusion: str = "mean", discard_ratio: float = 0.0) -> dict:
    """Compute ``method`` for ``subject``, write ``OUT/<method>.png`` and ``.json``; returns the JSON record.

    Raises:
        ValueError: unknown method or fusion, a discard ratio outside [0, 1), a layer or head that does not exist.
        CapabilityError: a model without attention maps, or a kernel without weights.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {list(METHODS)}")
    if head_fusion not in FUSIONS:
        raise ValueError(f"unknown head fusion {head_fusion!r}; valid: {list(FUSIONS)}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard ratio must be in [0, 1), got {discard_ratio}")
    out = Path(out_dir)
    record = {"method": method, "input": subject.label}
    if method == "heads":
        if not attention_shells(subject.model):
            raise CapabilityError(f"a {type(subject.body).__name__} has no attention heads to rank (its token mixing "
                                  "is convolutional); choose a run of a model with attention")
        scores = head_importance(subject.model, subject.loss)
        table = ragged_table([s.tolist() for s in scores])
        png = layer_head_png(table, out / "heads.png", f"head importance: |loss change| with one head zeroed",
                             "|loss change|")
        record["importance"] = [s.tolist() for s in scores]
    elif method == "distance":
        table, unit = _distances(subject)
        png = layer_head_png(ragged_table(table), out / "distance.png", f"mean attention distance ({unit})", unit)
        record["distance"], record["unit"] = table, unit
    else:
        png = _relevance_figure(subject, method, out, layer, head, head_fusion, discard_ratio, record)
    record["png"] = str(png)
    write_json(out / f"{method}.json", record)
    return record


def _distances(subject: Subject) -> tuple[list[list[float]], str]:
    maps = model_maps(subject.model, subject.run, subject.body, subject.inputs if subject.kind == "image" else None)
    rows = []
    for m in maps:
        if subject.kind == "text":
            rows.append(mean_attention_distance([m], (1, m.shape[-1]))[0].tolist())
            continue
        grid, _ = content_grid(subject.body, m.shape[-2])
        side = subject.inputs.shape[-1] / grid[1]  # pixels per token of this stage
        keys = None if m.shape[-1] == m.shape[-2] else strided_keys(subject, m, "centre")
        rows.append(mean_attention_distance([m], grid, side, keys)[0].tolist())
    return rows, "tokens" if subject.kind == "text" else "pixels"


def strided_keys(subject: Subject, m: Tensor, how: str) -> Tensor:
    """The ``(S, T)`` placement (:func:`key_placement`) of a ``(B, H, T, S)`` map's keys made by a strided
    convolution over the query grid (a body with ``key_layout()``: CvT).

    Raises:
        ValueError: a map whose keys the model does not say how it made.
    """
    T, S = m.shape[-2:]
    layout = getattr(subject.body, "key_layout", None)
    if subject.kind != "image" or layout is None:
        raise ValueError(f"an attention map is {T}x{S} (queries x keys of another length) and "
                         f"{type(subject.body).__name__} does not say where its keys sit; use --method heads")
    grid, prefix = content_grid(subject.body, T)
    kernel, stride, padding = layout()
    placed = key_placement(grid, kernel, stride, padding, prefix, how, m.device)
    if placed.shape[0] != S:
        raise ValueError(f"an attention map has {S} keys, but a {kernel}x{kernel} convolution of stride {stride} "
                         f"makes {placed.shape[0]} from a {grid[0]}x{grid[1]} grid")
    return placed


def _relevance_figure(subject: Subject, method: str, out: Path, layer, head, head_fusion, discard_ratio,
                      record: dict) -> Path:
    grads = None
    if method == "grad_rollout":
        scores, maps = maps_with_gradients(subject.model, subject.run, type(subject.body).__name__,
                                           map_shells(subject.model, subject.body))
        scores.reshape(-1)[subject.target].backward()
        grads = [m.grad for m in maps]
        maps = [m.detach() for m in maps]
    else:
        maps = model_maps(subject.model, subject.run, subject.body,
                          subject.inputs if subject.kind == "image" else None)
    tokens = maps[-1].shape[-2]  # queries: a CvT's strided keys are fewer, placed on the queries by `spread`
    spread = None if maps[-1].shape[-1] == tokens else strided_keys(subject, maps[-1], "spread")
    if subject.kind == "image":
        grid, prefix = content_grid(subject.body, tokens)
        content = grid[0] * grid[1]
    else:
        content = tokens
    rel = relevance(method, maps, content, subject.causal, head_fusion, discard_ratio, layer, head, grads, spread)
    record.update(note=rel.note, layers=rel.layers, relevance=rel.values.tolist())
    title = f"{rel.note} — {subject.label}"
    if subject.kind == "text":
        return tokens_png(subject.shown, rel.values.numpy(), out / f"{method}.png", title)
    heats = {method: rel.values.view(grid).numpy()}
    if method == "raw" and head is None:
        for h in range(maps[rel.layers[0]].shape[1]):
            heats[f"head {h}"] = relevance("raw", maps, content, False, layer=rel.layers[0], head=h,
                                           spread=spread).values.view(grid).numpy()
    return overlay_png(subject.shown, heats, out / f"{method}.png", title)
