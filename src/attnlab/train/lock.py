"""One writer per run folder: an exclusive operating-system lock on ``RUN_DIR/.attnlab.lock``.

Everything that writes into a run folder holds this lock while it does: ``attnlab train`` (a new run,
``--resume``, ``--overwrite``; under ``torchrun`` rank 0 holds it for the whole job) and ``attnlab eval`` (it writes
``eval.json``). The lock is ``fcntl.flock`` on the lock file, so the operating system drops it when its holder
exits, is killed or crashes; nothing has to clean up after a dead process.

The lock file records its holder (pid, host, start time and command) so that a second writer is refused with one
line naming it (:class:`RunLockedError`). The holder empties the file when it lets go, so a file that still names a
holder but can be locked was left by a process that died (``kill -9``, a crash, a power cut): the next writer takes
it over and says so on stderr.

The record is written into the locked file itself, not through :mod:`attnlab.core.io`'s atomic replace: a replaced
file would be a new file, not the one that is locked.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LOCK_FILE = ".attnlab.lock"


class RunLockedError(FileExistsError):
    """Another process holds the run folder's lock (the message names it). An ``OSError`` without a path, so the
    command line prints the message as one line with exit code 2."""


@dataclass(frozen=True)
class Holder:
    """The process holding a run folder: what the lock file records."""

    pid: int
    host: str
    since: str
    command: str

    @classmethod
    def this_process(cls) -> "Holder":
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S"), _command_line())

    def describe(self, holds_lock: bool = True) -> str:
        """``pid N on HOST since TIME (COMMAND)``; for a holder of a live lock whose pid is gone, says so."""
        text = f"pid {self.pid} on {self.host} since {self.since} ({self.command})"
        if holds_lock and self.host == socket.gethostname() and not _alive(self.pid):
            text += ", which has exited while a process it started still holds the lock"
        return text


class RunLock:
    """The lock of one run folder; :meth:`acquire` takes it (creating the folder), :meth:`release` lets it go.

    Also a context manager. Releasing twice, or a lock never taken, is a no-op.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        """Take the lock without waiting, record this process in the lock file and return ``self``.

        A lock file left by a dead holder is taken over with a line on stderr naming that holder.

        Raises:
            RunLockedError: another process holds the lock (the message names its pid, host, start and command).
            FileExistsError / NotADirectoryError: the run folder's path is a file, or lies under one.
            PermissionError / OSError: the folder or the lock file cannot be created or written.
        """
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd, patience=1.0)
            os.close(fd)
            who = holder.describe() if holder else "another process (it has not recorded itself yet)"
            raise RunLockedError(f"run folder {str(self.run_dir)!r} is in use by {who}; wait for it to finish or stop "
                                 "it, or use another run folder (train.run_dir=...)") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            stale = _read_holder(fd)
            if stale is not None:
                print(f"attnlab: run folder {str(self.run_dir)!r} was left locked by "
                      f"{stale.describe(holds_lock=False)}, which is gone; taking it over", file=sys.stderr, flush=True)
            _write_holder(fd, Holder.this_process())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file (a clean exit leaves no holder behind) and let the lock go."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # the lock goes anyway; the next writer then reports this holder as gone
        finally:
            os.close(fd)  # closing the last descriptor of the file drops the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int, patience: float = 0.0) -> Holder | None:
    """The record in the open lock file; waits up to ``patience`` seconds for a holder that is still writing it."""
    deadline = time.monotonic() + patience
    while True:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 1 << 16)
        try:
            return Holder(**json.loads(raw.decode("utf-8")))
        except (ValueError, TypeError):  # empty, half written or not ours
            if time.monotonic() >= deadline:
                return None
        time.sleep(0.05)


def _write_holder(fd: int, holder: Holder) -> None:
    data = json.dumps(asdict(holder)).encode("utf-8")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, data)
    os.fsync(fd)


def _command_line() -> str:
    """This process's command line as a user typed it (``attnlab train ...`` for the CLI)."""
    argv = list(sys.argv) or [""]
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if Path(argv[0]).name == "attnlab" or (spec is not None and spec.name.startswith("attnlab.cli")):
        argv[0] = "attnlab"
    else:
        argv[0] = Path(argv[0]).name or "python"
    return shlex.join(argv)[:300]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but belongs to someone else
    return True
