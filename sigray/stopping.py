"""SIGTERM (and a first Ctrl-C) as a request to stop gracefully, from the moment a run command starts.

SLURM's time limit, ``ray job stop`` and spot reclaims send SIGTERM at any moment, also while
a run is still planning or connecting to Ray. ``ray.init`` replaces the process's SIGTERM
handler with one that exits at once (code 15), and a TERM during the connect raises
``SystemExit`` from inside it; ``init_ray_keeping_stop`` turns both back into a stop request,
so every TERM ends in the same resumable exit.

Stop requests nest (the CLI opens one before planning, the runner another): the outermost
installs the handler, and all of them share its flag.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable

_depth = 0
_signalled = False
_previous_handler = None


def _on_term(signum, frame) -> None:
    global _signalled
    _signalled = True


def _on_interrupt(signum, frame) -> None:
    """Ctrl-C (or a notebook's stop button): the first is a graceful stop, as a TERM; a second quits at once."""
    global _signalled
    if _signalled:
        raise KeyboardInterrupt
    _signalled = True
    sys.stderr.write("sigray: stopping: the batches in flight finish and are saved (Ctrl-C again quits at once).\n")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class StopRequested:
    """While open, SIGTERM sets a flag instead of ending the process; ``requested`` is that flag
    or the deadline (seconds from opening) having passed."""

    def __init__(self, deadline_s: float | None = None):
        self.deadline = None if deadline_s is None else time.monotonic() + deadline_s

    def __enter__(self) -> StopRequested:
        global _depth, _signalled, _previous_handler
        if _depth == 0:
            _signalled = False
            # Signal handlers can be set only from the main thread; elsewhere a TERM keeps its default.
            _previous_handler = _install() if _main_thread() else None
        _depth += 1
        return self

    def __exit__(self, *exc) -> None:
        global _depth
        _depth -= 1
        if _depth == 0 and _previous_handler is not None:
            for signum, handler in _previous_handler.items():
                signal.signal(signum, handler)

    @property
    def requested(self) -> bool:
        return _signalled or (self.deadline is not None and time.monotonic() >= self.deadline)


def init_ray_keeping_stop(init: Callable[[], None]) -> None:
    """Call ``init`` (a ``ray.init``) with a TERM during or after it still a graceful stop."""
    global _signalled
    try:
        init()
    except SystemExit as exc:
        if _depth == 0 or exc.code != signal.SIGTERM:
            raise
        _signalled = True  # Ray's handler caught a TERM while connecting
    finally:
        if _depth and _main_thread():
            _install()


def _install() -> dict:
    """Our handlers for TERM and INT; returns those they replace."""
    return {
        signal.SIGTERM: signal.signal(signal.SIGTERM, _on_term),
        signal.SIGINT: signal.signal(signal.SIGINT, _on_interrupt),
    }
