"""The single-writer lease on a store: at most one live run writes it.

A lease is a small JSON file, ``<store>/lease.json``, naming its owner (a run id), the
host and process of the driver that took it, and when it expires. The coordinator
renews it at every flush and checks it is still the owner before writing (fencing).

A lease is not a lock that outlives its owner: it may be taken over when it has
expired, or at once when its driver ran on this host and that process is gone (a
SIGKILLed driver, a crashed job), so running the same command again resumes.
Taking a lease is serialised by an exclusive-create mutex file, so two drivers
starting together cannot both win.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass

from sigray.errors import StoreError, StoreLockedError

_LEASE = "lease.json"
_MUTEX = "lease.mutex"
_MUTEX_STALE_S = 30.0


@dataclass(frozen=True)
class Lease:
    owner: str
    host: str
    pid: int
    expires_at: float

    def alive(self, now: float) -> bool:
        """Whether the holder may still be writing."""
        if now >= self.expires_at:
            return False
        if self.host == socket.gethostname():
            return _process_exists(self.pid)
        return True


def new_owner_id() -> str:
    return uuid.uuid4().hex


def read_lease(store_path: str) -> Lease | None:
    try:
        with open(os.path.join(store_path, _LEASE)) as f:
            return Lease(**json.load(f))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return None  # a damaged lease file protects nothing; it is replaced on acquire


def acquire(store_path: str, owner: str, ttl_s: float) -> Lease:
    """Take the lease for ``owner`` or raise StoreLockedError naming the live holder.

    The lease names the process that first took it for ``owner`` (the driver), so a
    coordinator re-acquiring for the same run keeps the driver as the holder.
    """
    with _Mutex(store_path):
        now = time.time()
        held = read_lease(store_path)
        if held is not None and held.owner != owner and held.alive(now):
            raise StoreLockedError(
                f"store {store_path} is in use by another run (driver pid {held.pid} on {held.host}, "
                f"lease expires in {held.expires_at - now:.0f} s). Wait for it to finish, stop it, "
                "or use another --store."
            )
        if held is not None and held.owner == owner:  # our own run again (a restarted coordinator)
            lease = Lease(owner=owner, host=held.host, pid=held.pid, expires_at=now + ttl_s)
        else:
            lease = Lease(owner=owner, host=socket.gethostname(), pid=os.getpid(), expires_at=now + ttl_s)
        _write(store_path, lease)
        return lease


def renew(store_path: str, lease: Lease, ttl_s: float) -> Lease:
    """Extend our lease; StoreLockedError if someone else holds it now (we must stop writing)."""
    held = read_lease(store_path)
    if held is None or held.owner != lease.owner:
        holder = "nobody" if held is None else f"pid {held.pid} on {held.host}"
        raise StoreLockedError(f"store {store_path}: lost the write lease (now held by {holder}); stopping.")
    renewed = Lease(owner=lease.owner, host=held.host, pid=held.pid, expires_at=time.time() + ttl_s)
    _write(store_path, renewed)
    return renewed


def release(store_path: str, owner: str) -> None:
    """Give the lease up if we hold it (a finished run lets the next one in at once)."""
    held = read_lease(store_path)
    if held is not None and held.owner == owner:
        try:
            os.remove(os.path.join(store_path, _LEASE))
        except FileNotFoundError:
            pass


def _write(store_path: str, lease: Lease) -> None:
    tmp = os.path.join(store_path, f".{_LEASE}.{uuid.uuid4().hex}")
    try:
        with open(tmp, "w") as f:
            json.dump(asdict(lease), f)
        os.replace(tmp, os.path.join(store_path, _LEASE))
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
    """An exclusive-create file held for the few milliseconds of an acquire."""

    def __init__(self, store_path: str):
        self.path = os.path.join(store_path, _MUTEX)

    def __enter__(self) -> _Mutex:
        deadline = time.monotonic() + 10.0
        while True:
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return self
            except FileExistsError:
                self._clear_if_stale()
            except OSError as exc:
                raise StoreError(f"cannot lock store {os.path.dirname(self.path)}: {exc.strerror or exc}.") from None
            if time.monotonic() > deadline:
                raise StoreLockedError(f"store {os.path.dirname(self.path)}: another process is taking its lease.")
            time.sleep(0.05)  # another acquire holds the mutex for milliseconds

    def __exit__(self, *exc) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def _clear_if_stale(self) -> None:
        try:
            if time.time() - os.path.getmtime(self.path) > _MUTEX_STALE_S:
                os.remove(self.path)  # left by a process killed inside an acquire
        except FileNotFoundError:
            pass
