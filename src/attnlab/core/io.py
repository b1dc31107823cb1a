"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every writer puts the data in a temporary file next to the target (same directory, so the rename stays on
one file system), gives it the mode a plain ``open()`` would (``0o666`` minus the process umask; the
temporary file starts at ``0o600``), flushes it to disk and renames it over the target with ``os.replace``.
On any error the temporary file is removed and the target is untouched. Parent directories are created. Only a
killed process leaves its temporary file behind; :func:`unfinished_writes` finds those.

:func:`writable_folder` checks a folder can be made before anything is computed for it (a file in the way is a
``ValueError`` naming it, a folder this process may not write a ``PermissionError``).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


# the temporary name write_with gives a file: ".<target name>.<8 random characters>.tmp<target suffix>"
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]*)?$")


def default_file_mode() -> int:
    """``0o666`` minus the process umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_with(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Atomically create ``path`` by calling ``write(tmp)``, which writes the whole file at ``tmp``.

    For writers that take a file name: ``numpy.save``, ``matplotlib``'s ``savefig``, ``safetensors``'
    ``save_file``. ``tmp`` lies in the target's directory and ends with the target's suffix (``numpy.save``
    would otherwise append ``.npy``). Returns ``path`` as a ``Path``.

    Raises:
        whatever ``write`` or the file system raises (``OSError``); the target is then unchanged.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def unfinished_writes(folder: str | os.PathLike) -> list[Path]:
    """Temporary files :func:`write_with` left in ``folder`` when its process was killed mid-write (a writer that
    fails removes its own), sorted; ``[]`` for a folder that does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and _TEMPORARY.match(p.name))


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a folder, or ``None`` when ``path`` is a
    folder or can be created as one (as far as files are concerned: permissions are not checked)."""
    existing = _first_existing(Path(path))
    return None if existing is None or existing.is_dir() else existing


def _first_existing(path: Path) -> Path | None:
    return next((p for p in (path, *path.parents) if p.exists()), None)


def writable_folder(path: str | os.PathLike, what: str = "folder") -> Path:
    """``path`` (``~`` expanded) when it is a folder or can be created as one; nothing is created.

    Args:
        what: how messages name the folder (``"output folder"``, ``"run folder"``).

    Raises:
        ValueError: ``path`` or one of its parents is a file (the message names it and the fix).
        PermissionError: the folder (or the parent it would be created in) is not writable for this process.
    """
    folder = Path(path).expanduser()
    blocker = file_in_the_way(folder)
    if blocker == folder:
        raise ValueError(f"{what} {str(folder)!r} is a file, not a folder; remove or rename the file, or choose "
                         "another path")
    if blocker is not None:
        raise ValueError(f"{what} {str(folder)!r} cannot be created: {str(blocker)!r} is a file, not a folder; "
                         "choose a path under a folder")
    existing = _first_existing(folder)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "Permission denied", str(existing))
    return folder


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` to ``path`` as UTF-8."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Atomically write ``obj`` as JSON (``indent`` spaces, ``sort_keys``) plus a final newline.

    Raises:
        TypeError: ``obj`` holds something JSON cannot encode (nothing is written).
    """
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Atomically copy the contents of ``src`` to ``dst``."""
    return write_with(dst, lambda tmp: shutil.copyfile(src, tmp))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
