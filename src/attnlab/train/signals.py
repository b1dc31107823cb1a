"""Ctrl-C handling for the training loop: the first SIGINT/SIGTERM asks the loop to stop after the
current step (so the checkpoint it saves is consistent); a second SIGINT aborts at once.

A SIGTERM after the request is ignored: under ``torchrun`` the terminal's Ctrl-C reaches the workers
and the launcher, which then sends SIGTERM to the workers; they keep stopping gracefully and save.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable


class Abort(KeyboardInterrupt):
    """A second Ctrl-C: stop immediately without saving."""


def install_stop_handlers(request_stop: Callable[[], None]) -> dict:
    """Route SIGINT and SIGTERM to ``request_stop`` (only possible in the main thread; else a no-op).

    Returns the previous handlers for :func:`restore_handlers`.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    requested = []

    def handler(signum, frame):
        if requested and signum == signal.SIGINT:
            raise Abort
        if requested:
            return
        requested.append(signum)
        request_stop()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def restore_handlers(old: dict) -> None:
    for sig, h in old.items():
        signal.signal(sig, h)
