"""The command line's error boundary: anything a user typed or gave that is wrong becomes one line on stderr.

``run_handler`` calls a subcommand's handler and turns the errors of bad input into
``attnlab COMMAND: error: MESSAGE`` with an exit code:

- 2 (usage): ``ValueError``/``TypeError`` from checking user input, a path that does not exist, is a file where a
  folder is needed (or the other way round) or already exists, a corrupt safetensors file;
- 1: the file system refused (permission denied, read-only, disk full, any other ``OSError``);
- 130: Ctrl-C.

File-system messages name the path and the fix. Anything else (a bug) keeps its traceback, and
``ATTNLAB_DEBUG=1`` shows the traceback of every error.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Callable

from ..core.io import file_in_the_way

USAGE, FAILURE, INTERRUPTED = 2, 1, 130
_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def debug_enabled() -> bool:
    """``ATTNLAB_DEBUG`` is set to anything but empty or ``0``: show tracebacks."""
    return os.environ.get("ATTNLAB_DEBUG", "") not in ("", "0")


def run_handler(command: str, handler: Callable[[], "int | None"]) -> int:
    """Run ``handler()`` and return its exit code (``None`` = 0); errors of bad input become one line.

    Raises:
        whatever ``handler`` raises that is not bad input (a bug keeps its traceback), and every error when
        ``ATTNLAB_DEBUG=1``.
    """
    try:
        return int(handler() or 0)
    except KeyboardInterrupt as e:
        print(f"attnlab: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:  # noqa: BLE001 - classified below; anything unknown is raised again
        code, message = describe_error(e)
        if code is None or debug_enabled():
            raise
        print(f"attnlab {command}: error: {message}", file=sys.stderr)
        return code


def describe_error(e: BaseException) -> tuple[int | None, str]:
    """``(exit code, one-line message)`` for an error of bad input, ``(None, "")`` for anything else."""
    if isinstance(e, OSError):
        return (USAGE if isinstance(e, _PATH_ERRORS) else FAILURE), os_error_message(e)
    if isinstance(e, UnicodeDecodeError):  # a ValueError that names no file: say what to do about it
        return USAGE, (f"a file is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at position {e.start}: "
                       f"{e.reason}); convert it to UTF-8")
    if isinstance(e, (ValueError, TypeError, FloatingPointError)):
        return USAGE, _one_line(str(e) or type(e).__name__)
    if type(e).__name__ == "SafetensorError":  # safetensors' own error: not a ValueError
        return USAGE, f"a safetensors file is truncated or corrupt ({_one_line(str(e))}); write or copy it again"
    return None, ""


def os_error_message(e: OSError) -> str:
    """One line naming the path of a file-system error and how to fix it (the error's own text without a path)."""
    if e.filename is None:
        return _one_line(str(e))
    path = str(e.filename)
    if isinstance(e, FileExistsError):
        if Path(path).exists() and not Path(path).is_dir():
            return f"{path!r} is a file where a folder is needed; remove or rename the file, or choose another path"
        return f"{path!r} already exists; remove it or choose another path"
    if isinstance(e, NotADirectoryError):
        blocker = file_in_the_way(Path(path))
        where = f"{str(blocker)!r} is a file, not a folder" if blocker else "a part of it is a file, not a folder"
        return f"cannot use {path!r}: {where}; choose a path under a folder, or move the file"
    if isinstance(e, IsADirectoryError):
        return f"{path!r} is a folder where a file is needed; give the path of a file"
    if isinstance(e, FileNotFoundError):
        return f"{path!r} does not exist; check the path"
    if isinstance(e, PermissionError):
        return (f"permission denied for {path!r}; check its permissions and its folder's (`ls -ld`), or choose "
                "another path")
    if e.errno == errno.EROFS:
        return f"{path!r} is on a read-only file system; choose a writable path"
    if e.errno == errno.ENOSPC:
        return f"no space left on the device holding {path!r}; free some space or choose another path"
    other = f" -> {str(e.filename2)!r}" if e.filename2 is not None else ""
    return f"{e.strerror or type(e).__name__}: {path!r}{other}"


def _one_line(text: str) -> str:
    """Multi-line messages (a library's own) joined into one line."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())
