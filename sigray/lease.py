"""The single-writer lease on a store: at most one live run writes it.

A lease is a small JSON file, ``<store>/lease.json``, naming its owner (a run id), the
host and process of the driver that took it, when it was last renewed, and when it
expires. The coordinator renews it at every flush, and checks it is still the owner
before writing (fencing): a coordinator that lost its lease stops writing.

A lease is not a lock that outlives its owner. It may be taken over when it expired,
or sooner when its driver ran on this host, that process is gone (a SIGKILLed driver,
a crashed job) and nobody has renewed the lease for two renewal periods: Ray ends a
dead driver's actors within a second or two, and the second condition waits for that,
so a rerun of the same command resumes within seconds and never beside a coordinator
that is still writing. Taking a lease is serialised by an exclusive-create mutex file,
so two drivers starting together cannot both win.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, replace

from sigray.errors import StoreError, StoreLockedError
from sigray.storage import Location

_LEASE = "lease.json"
_MUTEX = "lease.mutex"
_MUTEX_STALE_S = 30.0
_SILENCE_MARGIN_S = 2.0


@dataclass(frozen=True)
class Lease:
    owner: str
    host: str
    pid: int
    renewed_at: float
    renew_every_s: float
    expires_at: float

    def alive(self, now: float) -> bool:
        """Whether the holder may still be writing."""
        if now >= self.expires_at:
            return False
        return not (self.driver_gone() and now >= self.silent_after)

    def driver_gone(self) -> bool:
        return self.host == socket.gethostname() and not _process_exists(self.pid)

    @property
    def silent_after(self) -> float:
        """When, without renewal, its coordinator must have stopped."""
        return self.renewed_at + 2 * self.renew_every_s + _SILENCE_MARGIN_S


def new_owner_id() -> str:
    return uuid.uuid4().hex


def read_lease(store_path: str) -> Lease | None:
    data = Location(store_path).read(_LEASE)
    if data is None:
        return None
    try:
        return Lease(**json.loads(data))
    except (ValueError, TypeError):
        return None  # a damaged lease file protects nothing; it is replaced on acquire


def acquire(store_path: str, owner: str, ttl_s: float, renew_every_s: float) -> Lease:
    """Take the lease for ``owner`` or raise StoreLockedError naming the live holder.

    When the holder's driver is gone but its lease was renewed moments ago, wait (a few
    seconds) for its coordinator to stop. A lease already held by ``owner`` (a restarted
    coordinator of the same run) keeps naming the driver that took it.
    """
    give_up = time.time() + ttl_s
    while True:
        with _Mutex(store_path):
            now = time.time()
            held = read_lease(store_path)
            if held is None or held.owner == owner or not held.alive(now):
                lease = _fresh(owner, ttl_s, renew_every_s, now)
                if held is not None and held.owner == owner:
                    lease = replace(lease, host=held.host, pid=held.pid)
                _write(store_path, lease)
                return lease
        if not held.driver_gone() or now > give_up:
            raise StoreLockedError(
                f"store {store_path} is in use by another run (driver pid {held.pid} on {held.host}, "
                f"lease expires in {held.expires_at - now:.0f} s unless renewed). Wait for it to finish, "
                "stop it, or use another --store."
            )
        time.sleep(max(0.1, min(held.silent_after, held.expires_at) - now))  # its coordinator is stopping


def renew(store_path: str, lease: Lease, ttl_s: float) -> Lease:
    """Extend our lease; StoreLockedError if someone else holds it now (we must stop writing)."""
    held = read_lease(store_path)
    if held is None or held.owner != lease.owner:
        holder = "nobody" if held is None else f"pid {held.pid} on {held.host}"
        raise StoreLockedError(f"store {store_path}: lost the write lease (now held by {holder}); stopping.")
    now = time.time()
    renewed = replace(held, renewed_at=now, expires_at=now + ttl_s)
    _write(store_path, renewed)
    return renewed


def release(store_path: str, owner: str) -> None:
    """Give the lease up if we hold it (a finished run lets the next one in at once)."""
    held = read_lease(store_path)
    if held is not None and held.owner == owner:
        Location(store_path).remove(_LEASE)


def _fresh(owner: str, ttl_s: float, renew_every_s: float, now: float) -> Lease:
    return Lease(
        owner=owner,
        host=socket.gethostname(),
        pid=os.getpid(),
        renewed_at=now,
        renew_every_s=renew_every_s,
        expires_at=now + ttl_s,
    )


def _write(store_path: str, lease: Lease) -> None:
    try:
        Location(store_path).write(_LEASE, json.dumps(asdict(lease)).encode())
    except OSError as exc:
        raise StoreError(f"cannot write the lease of store {store_path}: {exc.strerror or exc}.") from None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Mutex:
    """An exclusive-create file (a conditional PUT on object stores) held for the moment of an acquire."""

    def __init__(self, store_path: str):
        self.location = Location(store_path)

    def __enter__(self) -> _Mutex:
        deadline = time.monotonic() + 10.0
        while True:
            try:
                if self.location.create_exclusive(_MUTEX):
                    return self
                self._clear_if_stale()
            except OSError as exc:
                raise StoreError(f"cannot lock store {self.location.path}: {exc.strerror or exc}.") from None
            if time.monotonic() > deadline:
                raise StoreLockedError(f"store {self.location.path}: another process is taking its lease.")
            time.sleep(0.05)  # another acquire holds the mutex for milliseconds

    def __exit__(self, *exc) -> None:
        self.location.remove(_MUTEX)

    def _clear_if_stale(self) -> None:
        age = self.location.age_s(_MUTEX, time.time())
        if age is not None and age > _MUTEX_STALE_S:
            self.location.remove(_MUTEX)  # left by a process killed inside an acquire
