"""``attnlab viz RUN --method M [--image FILE | --index N | --text "..."]``: arguments only; the work is
:func:`attnlab.viz.runs.explain`."""

from __future__ import annotations

import argparse

from .numbers import finite_float, integer, non_negative_int

EXAMPLES = [
    "attnlab viz runs/vision-digits --method rollout                 # the first test image",
    "attnlab viz runs/vision-digits --method grad_rollout --index 7 --discard-ratio 0.9",
    "attnlab viz runs/vision-fashion --image shoe.png --method raw --layer 2",
    "attnlab viz runs/vision-fashion --method distance              # mean attention distance per layer and head",
    "attnlab viz runs/vision-fashion --method heads                 # head importance by ablation",
    "attnlab viz runs/char-gpt --text 'And God said' --method rollout",
]
METHODS = ("rollout", "grad_rollout", "raw", "distance", "heads")


def add_viz_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory written by `attnlab train` (an image or text classifier, or a "
                                  "language model)")
    p.add_argument("--method", required=True, choices=METHODS,
                   help="rollout | grad_rollout | raw (one layer) | distance (mean attention distance) | heads "
                        "(head importance)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image", help="image file of the run's size (image runs)")
    src.add_argument("--index", type=non_negative_int, help="a test-split example by index (classifier runs; "
                                                           "default 0)")
    src.add_argument("--text", help="text to explain (language models; text classifiers of a text dataset)")
    p.add_argument("--layer", type=integer, default=None, help="raw: the layer (default the last; -1 = last)")
    p.add_argument("--head", type=non_negative_int, default=None, help="raw: one head (default: heads fused)")
    p.add_argument("--head-fusion", choices=["mean", "max", "min"], default="mean", help="how heads are fused")
    p.add_argument("--discard-ratio", type=finite_float(0.0, 1.0, max_open=True), default=0.0,
                   help="rollout: share of the weakest attention entries zeroed per layer, in [0, 1) (default 0)")
    p.add_argument("--output", default=None, help="folder for the PNG and JSON (default RUN/viz)")
    p.add_argument("--device", default="auto")


def cmd_viz(args: argparse.Namespace) -> None:
    """Explain the input and print the PNG written."""
    from pathlib import Path

    from ..core.io import writable_folder
    from ..explain.runs import explain, open_subject

    out = writable_folder(args.output or Path(args.run_dir) / "viz", "output folder")
    subject = open_subject(args.run_dir, args.image, args.index, args.text, args.device)
    record = explain(subject, args.method, out, args.layer, args.head, args.head_fusion, args.discard_ratio)
    print(f"{args.method}: {record.get('note', subject.label)} -> {record['png']}")
