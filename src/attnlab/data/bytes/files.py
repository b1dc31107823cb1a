"""File-type classification from raw bytes (ByteFormer's setting, Horton et al. 2023: no decoding, no parsing), on the
files of the machine itself.

``file_types`` walks system folders (default ``/usr/share`` and ``/usr/lib``; symbolic links are not followed),
sorts each file into a type by its name and, for binary types, checks its magic number (:data:`TYPES`), keeps the
types with at least ``min_per_class`` files, draws up to ``per_class`` files per type with a seeded generator and
reads ``max_bytes`` bytes of each: the first (``window="start"``, where headers make binary types easy) or a seeded
window inside the file (``"random"``: the type must be told from its content). The types found and their file counts
are in ``dataset.options["found"]``: which types exist depends on what is installed.

Inputs: ``(N, max_bytes)`` int64 byte values, ``-1`` after the end of a shorter file (ByteFormer's padding).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ..base import SuiteDataset, SuiteSplit, check_positive, long_tensor, split_rngs

# type -> (file name suffixes, magic bytes at offset 0 or None for text formats)
TYPES: dict[str, tuple[tuple[str, ...], bytes | None]] = {
    "png": ((".png",), b"\x89PNG"),
    "gzip": ((".gz",), b"\x1f\x8b"),
    "wav": ((".wav",), b"RIFF"),
    "elf": ((".so",), b"\x7fELF"),
    "jar": ((".jar",), b"PK\x03\x04"),
    "python": ((".py",), None),
    "svg": ((".svg",), None),
    "json": ((".json",), None),
    "xml": ((".xml",), None),
    "html": ((".html", ".htm"), None),
    "yaml": ((".yaml", ".yml"), None),
    "javascript": ((".js",), None),
    "text": ((".txt",), None),
}
ROOTS = ("/usr/share", "/usr/lib")
MIN_SIZE = 64  # smaller files say little (empty __init__.py files, stubs)


def _suffix_types() -> dict[str, str]:
    return {suffix: name for name, (suffixes, _) in TYPES.items() for suffix in suffixes}


def find_files(roots: tuple[str, ...] = ROOTS) -> dict[str, list[Path]]:
    """Type -> sorted files of that type under ``roots`` (at least :data:`MIN_SIZE` bytes, magic checked)."""
    by_suffix, found = _suffix_types(), {name: [] for name in TYPES}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for f in files:
                name = by_suffix.get(os.path.splitext(f)[1].lower())
                if name is None:
                    continue
                path = Path(folder, f)
                try:
                    if path.is_symlink() or not path.is_file() or path.stat().st_size < MIN_SIZE:
                        continue
                    magic = TYPES[name][1]
                    if magic is not None and path.open("rb").read(len(magic)) != magic:
                        continue
                except OSError:  # unreadable: skipped
                    continue
                found[name].append(path)
    return {name: sorted(paths) for name, paths in found.items()}


def read_window(path: Path, max_bytes: int, window: str, rng: np.random.Generator) -> np.ndarray:
    """``max_bytes`` bytes of ``path`` as int64 values, -1 past its end; ``window`` ``start`` or ``random``."""
    size = path.stat().st_size
    offset = int(rng.integers(0, size - max_bytes + 1)) if window == "random" and size > max_bytes else 0
    with path.open("rb") as f:
        f.seek(offset)
        data = np.frombuffer(f.read(max_bytes), dtype=np.uint8).astype(np.int64)
    return np.pad(data, (0, max_bytes - len(data)), constant_values=-1)


def make_file_types(max_bytes: int = 1024, per_class: int = 200, min_per_class: int = 30, test_fraction: float = 0.25,
                    window: str = "start", roots: list[str] | None = None, seed: int = 0) -> SuiteDataset:
    """Classify files of this system by type from ``max_bytes`` of their bytes (see the module docstring).

    Raises:
        ValueError: bad sizes, ``window`` not start / random, a root that is not a folder, fewer than two types with
            ``min_per_class`` files (names what was found).
    """
    check_positive(max_bytes=max_bytes, per_class=per_class, min_per_class=min_per_class)
    if window not in ("start", "random"):
        raise ValueError(f"window must be 'start' (the first bytes) or 'random' (a window inside), got {window!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    roots = tuple(ROOTS if roots is None else roots)
    missing = [r for r in roots if not Path(r).is_dir()]
    if missing:
        raise ValueError(f"file_types roots {missing} are not folders")
    found = find_files(roots)
    counts = {name: len(paths) for name, paths in found.items()}
    kept = [name for name in TYPES if counts[name] >= min_per_class]
    if len(kept) < 2:
        raise ValueError(f"file_types found {counts} under {list(roots)}: fewer than two types with {min_per_class} "
                         "files or more; lower min_per_class or add roots")
    pick, read = split_rngs(seed, 2)
    parts = {"train": ([], []), "test": ([], [])}
    for label, name in enumerate(kept):
        paths = found[name]
        chosen = [paths[i] for i in np.sort(pick.choice(len(paths), min(per_class, len(paths)), replace=False))]
        n_test = max(1, int(round(test_fraction * len(chosen))))
        for rank, i in enumerate(pick.permutation(len(chosen))):
            rows, labels = parts["test" if rank < n_test else "train"]
            rows.append(read_window(chosen[i], max_bytes, window, read))
            labels.append(label)
    split = lambda p: SuiteSplit(long_tensor(np.stack(p[0])), long_tensor(np.array(p[1])), input_key="bytes")  # noqa: E731
    options = dict(max_bytes=max_bytes, per_class=per_class, min_per_class=min_per_class, test_fraction=test_fraction,
                   window=window, roots=list(roots), seed=seed, found=counts)
    return SuiteDataset(name="file_types", kind="classify", train=split(parts["train"]), test=split(parts["test"]),
                        seq_len=1, metric="accuracy", num_classes=len(kept), label_names=tuple(kept), options=options,
                        byte_length=max_bytes)

