"""Keeps a driver's store lease renewed from a small process of its own.

A driver that holds the lease while it works on the store itself (registering signals,
post-processing) must renew it for as long as that work lasts. A thread cannot be trusted to:
it needs the interpreter's GIL, and a main thread in numpy, pandas and Orion code (or in one
long C call) can keep it from the thread for seconds (measured here: a 0.1 s wait came back
up to 1.8 s late, and renewals every 0.5 s came 6.6 s apart, while `sigray detect` ran Orion's
threshold search). A process renews on time whatever the driver's interpreter does. It ends
with the driver: when its standard input closes (the driver stops it, or dies, even by
SIGKILL), or when its parent is no longer the driver (a child the driver forked holds the
pipe). It runs in a session of its own, so a Ctrl-C or SIGTERM to the driver's process group
(a graceful stop, which still writes) leaves it renewing.

The keeper renews at once when it is up (40 ms after it is started here: it imports the lease
alone, ~16 MB) and then every ``renew_every_s`` of the lease; it exits 0 when the driver is gone,
``LOST`` (printing why) when another run holds the store. The driver does not take its word
for the lease: ``KeptLease.check()`` (fencing before each write) reads the lease itself, so a
keeper that hangs or cannot reach the store never lets the driver write past the lease.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import time
from dataclasses import asdict

import sigray
from sigray.errors import StoreLockedError
from sigray.lease import Lease, held_by, renew
from sigray.storage import Storage, open_storage

log = logging.getLogger(__name__)
LOST = 3  # the keeper's exit status when the lease is someone else's
_CLOSE_S = 10.0
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sigray.__file__)))


class KeptLease:
    """A held lease renewed by a child process (the keeper) from construction until ``close()``
    (or the ``with`` block's end).

    ``check()`` raises StoreLockedError once the lease was lost: call it before each write
    (fencing), so a driver that lost its store never writes into a replaced one.
    """

    def __init__(self, store: str | Storage, lease: Lease, ttl_s: float):
        self.storage = open_storage(store)
        self.lease = lease
        self.ttl_s = ttl_s
        self.lost: str | None = None
        self._process = self._start()

    def __enter__(self) -> KeptLease:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check(self) -> None:
        """StoreLockedError unless this run holds the lease now, read from the store (not taken
        on the keeper's word: a keeper hung or failing to reach the store renews nothing). A
        lease past half its time to live is renewed here; a keeper that ended (killed) is replaced."""
        ended = self._process is not None and self._process.poll() is not None
        if ended and self.lost is None and self._process.returncode == LOST:
            said = self._process.stdout.read().decode(errors="replace").strip()
            self.lost = said or f"store {self.storage.url}: lost the write lease; stopping."
        if self.lost is None:
            try:
                held = held_by(self.storage, self.lease.owner)
                if held.expires_at - time.time() < self.ttl_s / 2:  # the keeper is late (or the lease lapsed
                    renew(self.storage, held, self.ttl_s)  # while nobody took it): renewed under the mutex
            except StoreLockedError as exc:
                self.lost = str(exc)
        if self.lost:
            raise StoreLockedError(self.lost)
        if ended:
            log.warning(
                "store %s: the process renewing its lease ended (exit status %s); starting another",
                self.storage.url,
                self._process.returncode,
            )
            self._process = self._start()

    def close(self) -> None:
        """Stop renewing (the caller releases the lease, or a rerun takes it once it expires)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.stdin.close()  # the keeper's signal to end
        try:
            process.wait(timeout=_CLOSE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    def _start(self) -> subprocess.Popen:
        settings = {"store": self.storage.url, "lease": asdict(self.lease), "ttl_s": self.ttl_s, "driver": os.getpid()}
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": _PACKAGE_ROOT + (os.pathsep + path if path else "")}
        # A session of its own: a terminal's Ctrl-C or a scheduler's SIGTERM to the driver's process
        # group stops the driver gracefully, writing meanwhile; the lease must stay renewed until the
        # driver closes the pipe (or dies).
        return subprocess.Popen(
            [sys.executable, "-c", "from sigray.lease_keeper import main; main()", json.dumps(settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )


def main() -> None:
    """The keeper process: ``python -c "from sigray.lease_keeper import main; main()" SETTINGS``."""
    sys.exit(_keep(json.loads(sys.argv[1])))


def _keep(settings: dict) -> int:
    storage = open_storage(settings["store"])
    lease = Lease(**settings["lease"])
    wait_s = 0.0  # the first renewal at once: the driver took the lease moments ago
    while True:
        closed, _, _ = select.select([sys.stdin], [], [], wait_s)
        if closed:  # the driver never writes: readable means its end of the pipe closed
            return 0
        if os.getppid() != settings["driver"]:  # the driver died, and a child it forked holds the pipe
            return 0
        try:
            lease = renew(storage, lease, settings["ttl_s"])
        except StoreLockedError as exc:
            print(exc, flush=True)
            return LOST
        except Exception as exc:  # noqa: BLE001 - a storage hiccup: try again at the next period
            log.warning("store %s: lease not renewed (%s: %s)", storage.url, type(exc).__name__, exc)
        wait_s = lease.renew_every_s
