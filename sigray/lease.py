"""The single-writer lease on a store: at most one live run writes it.

A lease is a small JSON file, ``<store>/lease.json``, naming its owner (a run id), the
host and process of the driver that took it, when it was last renewed, and when it
expires. The coordinator renews it at every flush, and checks it is still the owner
before writing (fencing): a coordinator that lost its lease stops writing. The driver's
lease is renewed from a process of its own while the driver works on the store
(``sigray.lease_keeper``).

A lease is not a lock that outlives its owner. It may be taken over when it expired,
or sooner when its driver ran on this host, that process is gone (a SIGKILLed driver,
a crashed job) and nobody has renewed the lease for two renewal periods: Ray ends a
dead driver's actors within a second or two, and the second condition waits for that,
so a rerun of the same command resumes within seconds and never beside a coordinator
that is still writing. Taking and renewing a lease are serialised by an exclusive-create
mutex file, so two drivers starting together cannot both win, and a renewal never
overwrites a lease another run has just taken.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, replace

from sigray.errors import StoreError, StoreLockedError
from sigray.storage import Storage, open_storage

log = logging.getLogger(__name__)
_LEASE = "lease.json"
_MUTEX = "lease.mutex"
_MUTEX_STALE_S = 30.0
_MUTEX_WAIT_S = 10.0  # another process holds it for milliseconds
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


def read_lease(store: str | Storage) -> Lease | None:
    """The lease of the store at ``store`` (a path, a URL or a Storage), None when nobody holds it."""
    data = open_storage(store).read(_LEASE)
    if data is None:
        return None
    try:
        return Lease(**json.loads(data))
    except (ValueError, TypeError):
        return None  # a damaged lease file protects nothing; it is replaced on acquire


def acquire(store: str | Storage, owner: str, ttl_s: float, renew_every_s: float) -> Lease:
    """Take the lease for ``owner`` or raise StoreLockedError naming the live holder.

    When the holder's driver is gone but its lease was renewed moments ago, wait (a few
    seconds) for its coordinator to stop. A lease already held by ``owner`` (a restarted
    coordinator of the same run) keeps naming the driver that took it.
    """
    storage = open_storage(store)
    storage.check_root()
    give_up = time.time() + ttl_s
    while True:
        with _Mutex(storage):
            now = time.time()
            held = read_lease(storage)
            if held is None or held.owner == owner or not held.alive(now):
                lease = _fresh(owner, ttl_s, renew_every_s, now)
                if held is not None and held.owner == owner:
                    lease = replace(lease, host=held.host, pid=held.pid)
                _write(storage, lease)
                return lease
        if not held.driver_gone() or now > give_up:
            raise StoreLockedError(
                f"store {storage.url} is in use by another run (driver pid {held.pid} on {held.host}, "
                f"lease expires in {held.expires_at - now:.0f} s unless renewed). Wait for it to finish, "
                "stop it, or use another --store."
            )
        time.sleep(max(0.1, min(held.silent_after, held.expires_at) - now))  # its coordinator is stopping


def renew(store: str | Storage, lease: Lease, ttl_s: float) -> Lease:
    """Extend our lease; StoreLockedError if someone else holds it now (we must stop writing).

    Under the mutex, as taking it is: else a run taking the lease between our read and our
    write would have its lease overwritten by ours, and two runs would write the store."""
    storage = open_storage(store)
    try:
        with _Mutex(storage):
            held = held_by(storage, lease.owner)
            now = time.time()
            renewed = replace(held, renewed_at=now, expires_at=now + ttl_s)
            _write(storage, renewed)
            return renewed
    except _MutexBusy:  # left by a process killed while taking the lease: nobody can take it meanwhile
        held_by(storage, lease.owner)
        log.warning("store %s: lease not renewed this time (its mutex is busy)", storage.url)
        return lease


def held_by(store: str | Storage, owner: str) -> Lease:
    """The lease, when ``owner`` holds it (even past its expiry: nobody took it); StoreLockedError
    naming the holder otherwise."""
    storage = open_storage(store)
    held = read_lease(storage)
    if held is None or held.owner != owner:
        holder = "nobody" if held is None else f"pid {held.pid} on {held.host}"
        raise StoreLockedError(f"store {storage.url}: lost the write lease (now held by {holder}); stopping.")
    return held


def release(store: str | Storage, owner: str) -> None:
    """Give the lease up if we hold it (a finished run lets the next one in at once)."""
    storage = open_storage(store)
    held = read_lease(storage)
    if held is not None and held.owner == owner:
        storage.remove(_LEASE)


def _fresh(owner: str, ttl_s: float, renew_every_s: float, now: float) -> Lease:
    return Lease(
        owner=owner,
        host=socket.gethostname(),
        pid=os.getpid(),
        renewed_at=now,
        renew_every_s=renew_every_s,
        expires_at=now + ttl_s,
    )


def _write(storage: Storage, lease: Lease) -> None:
    try:
        storage.write(_LEASE, json.dumps(asdict(lease)).encode())
    except OSError as exc:
        raise StoreError(f"cannot write the lease of store {storage.url}: {exc.strerror or exc}.") from None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _MutexBusy(StoreLockedError):
    """The lease's mutex stayed taken for seconds."""


class _Mutex:
    """An exclusive-create file (a conditional PUT on object stores) held for the moment a lease is
    taken or renewed.

    It names its holder (host, pid): one left by a process killed inside an acquire is cleared
    at once on that host, and after ``_MUTEX_STALE_S`` from any other.
    """

    def __init__(self, storage: Storage):
        self.storage = storage

    def __enter__(self) -> _Mutex:
        deadline = time.monotonic() + _MUTEX_WAIT_S
        while True:
            try:
                holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()
                if self.storage.create_exclusive(_MUTEX, holder):
                    return self
                self._clear_if_stale()
            except OSError as exc:
                raise StoreError(f"cannot write to store {self.storage.url}: {exc.strerror or exc}.") from None
            if time.monotonic() > deadline:
                raise _MutexBusy(f"store {self.storage.url}: another process is taking its lease.")
            time.sleep(0.05)  # another acquire holds the mutex for milliseconds

    def __exit__(self, *exc) -> None:
        self.storage.remove(_MUTEX)

    def _clear_if_stale(self) -> None:
        age = self.storage.age_s(_MUTEX, time.time())
        if age is None:
            return
        try:
            holder = json.loads(self.storage.read(_MUTEX) or b"{}")
            gone = holder.get("host") == socket.gethostname() and not _process_exists(int(holder["pid"]))
        except (ValueError, KeyError, TypeError):
            gone = False  # written by an older sigray, or still being written
        if gone or age > _MUTEX_STALE_S:
            self.storage.remove(_MUTEX)  # left by a process killed inside an acquire
