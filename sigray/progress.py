"""Showing a run's progress where its user looks: a notebook, a terminal, or a log.

In Jupyter a widget bar (tqdm's notebook display, when ipywidgets is installed); on a
terminal tqdm's bar; in a log (a batch job's output) a line every few seconds. The runner
calls a ``ProgressDisplay`` about once a second with a ``Progress``.
"""

from __future__ import annotations

import math
import sys
import time

from sigray.messages import Progress


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where stderr is no terminal, but a widget can be drawn)."""
    shell = sys.modules.get("IPython")
    ipython = shell.get_ipython() if shell is not None and hasattr(shell, "get_ipython") else None
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


class ProgressDisplay:
    """Callable with a ``Progress``; ``close()`` when the run ends. ``quiet`` shows nothing."""

    def __init__(self, quiet: bool = False, every_s: float = 5.0):
        self.quiet = quiet
        self.every_s = every_s
        self.last = -math.inf  # when a line was last printed: never (monotonic time may start near 0 at boot)
        self.bar = None
        self.unprinted: Progress | None = None  # a log's latest progress not yet written
        self.planning_since: float | None = None

    def __call__(self, p: Progress) -> None:
        if self.quiet:
            return
        if in_notebook() or sys.stderr.isatty():
            self._bar(p)
        elif time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            self._line(p)
        else:
            self.unprinted = p

    def _line(self, p: Progress) -> None:
        self.unprinted = None
        left = p.total - p.done - p.failed
        eta = f"{left / p.windows_per_s:.0f} s" if p.windows_per_s else "unknown"
        joining = f" (and {p.signals_to_add} signal(s) still being windowed)" if p.signals_to_add else ""
        print(
            f"{time.strftime('%H:%M:%S')} progress: {p.done}/{p.total} done{joining}, {p.failed} failed, "
            f"{p.in_flight} in flight, {p.windows_per_s:.1f} windows/s, ETA {eta}, {p.retries} retries",
            file=sys.stderr,
            flush=True,
        )

    def _bar(self, p: Progress) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm  # the notebook's widget in Jupyter, the terminal's bar elsewhere

            self.bar = tqdm(total=p.total, unit="win", desc="windows", initial=p.done + p.failed)
        self.bar.total = p.total  # grows while signals are still being windowed
        self.bar.n = p.done + p.failed
        postfix = {"failed": p.failed, "retries": p.retries}
        if p.signals_to_add:
            postfix["signals to window"] = p.signals_to_add
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def planned(self, done: int, total: int) -> None:
        """Planning's progress (``make_plan``'s ``on_planned``): a line every ``every_s`` once it
        has taken that long, as windowing hundreds of signals does."""
        if self.quiet:
            return
        now = time.monotonic()
        self.planning_since = now if self.planning_since is None else self.planning_since
        if now - self.planning_since >= self.every_s and now - self.last >= self.every_s:
            self.last = now
            when = time.strftime("%H:%M:%S")
            print(f"{when} planning: {done} of {total} signals read and checked", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.unprinted is not None:  # a log ends with where the run got to
            self._line(self.unprinted)
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
