"""The storage contract (``sigray.storage.base``) as one behavioural suite every backend runs.

A backend's test module subclasses ``StorageContract`` and provides two fixtures: ``storage``
(a new, empty root of that backend) and ``raw`` (a ``RawAccess`` that reads and writes the
same root without going through the backend, the way zarr's ``StoreTests`` has ``get``/``set``
hooks): the suite checks what the backend writes with the raw side and the other way round.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from sigray import lease
from sigray.errors import StoreLockedError
from sigray.lease_keeper import KeptLease
from sigray.storage import Storage
from sigray.store import NewSignal, RunStore, WindowRequest
from tests.processes import wait_renewed


class RawAccess:
    """Reads and writes a backend's root beside the backend (its files, its objects)."""

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError


def _signal(name: str, values: list[int]) -> NewSignal:
    requests = [WindowRequest(f"key-{v}".encode().ljust(16, b"\0"), f"prompt {v}", 3, 8) for v in values]
    points = np.arange(len(values), dtype=np.int64)
    return NewSignal(name, f"digest-{name}-{len(values)}", points, points.reshape(-1, 1) * 1.0, requests)


class StorageContract:
    # -- objects ----------------------------------------------------------------

    def test_what_is_written_is_read_back_and_seen_beside_the_backend(self, storage: Storage, raw: RawAccess):
        storage.write("a/b/object.json", b"one")
        assert storage.read("a/b/object.json") == b"one" == raw.get("a/b/object.json")
        raw.put("c/raw.bin", b"two")
        assert storage.read("c/raw.bin") == b"two"
        assert storage.read("missing") is None and not storage.exists("missing")
        assert storage.exists("a/b/object.json")

    def test_a_write_replaces_an_object_whole_for_concurrent_readers(self, storage: Storage):
        payloads = (b"a" * 200_000, b"b" * 300_000)
        storage.write("hot", payloads[0])
        stop, seen = threading.Event(), []

        def read_forever():
            while not stop.is_set():
                seen.append(storage.read("hot"))

        reader = threading.Thread(target=read_forever)
        reader.start()
        for k in range(30):
            storage.write("hot", payloads[k % 2])
        stop.set()
        reader.join()
        assert seen and all(data in payloads for data in seen)

    def test_exactly_one_of_many_concurrent_exclusive_creates_wins(self, storage: Storage):
        wins, start = [], threading.Barrier(8)

        def create():
            start.wait()
            wins.append(storage.create_exclusive("mutex"))

        threads = [threading.Thread(target=create) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(wins) == [False] * 7 + [True]
        storage.remove("mutex")
        assert storage.create_exclusive("mutex")

    def test_an_exclusive_create_stores_what_it_is_given(self, storage: Storage):
        assert storage.create_exclusive("holder", b"me")
        assert storage.read("holder") == b"me" and not storage.create_exclusive("holder", b"you")

    def test_a_lease_taken_by_a_process_killed_inside_the_acquire_is_taken_at_once(self, storage: Storage):
        import json

        dead = {"host": __import__("socket").gethostname(), "pid": 2**22 + 1}  # no such process
        storage.write("lease.mutex", json.dumps(dead).encode())
        started = time.monotonic()
        lease.acquire(storage, "next", ttl_s=60, renew_every_s=1)
        assert time.monotonic() - started < 5 and lease.read_lease(storage).owner == "next"

    def test_removing_what_is_absent_is_no_error(self, storage: Storage):
        storage.remove("never-written")
        storage.remove_prefix("never/written")

    def test_an_objects_age_counts_from_its_last_write(self, storage: Storage):
        assert storage.age_s("x", time.time()) is None
        storage.write("x", b"1")
        assert -5 < storage.age_s("x", time.time()) < 60

    # -- prefixes ---------------------------------------------------------------

    def test_listing_names_every_object_under_a_prefix(self, storage: Storage):
        assert storage.is_empty() and storage.list() == []
        for key in ("g-1/a", "g-1/sub/b", "g-2/c", "top"):
            storage.write(key, b".")
        assert storage.list() == ["g-1/a", "g-1/sub/b", "g-2/c", "top"]
        assert storage.list("g-1") == ["g-1/a", "g-1/sub/b"]
        assert not storage.is_empty()

    def test_removing_a_prefix_removes_it_all_and_nothing_else(self, storage: Storage):
        for key in ("g-1/a", "g-1/sub/b", "g-10/c", "g-2/d"):
            storage.write(key, b".")
        storage.remove_prefix("g-1")
        assert storage.list() == ["g-10/c", "g-2/d"]

    # -- zarr -------------------------------------------------------------------

    def test_zarr_chunks_written_through_the_store_read_back_from_a_new_one(self, storage: Storage):
        import zarr

        group = zarr.open_group(storage.zarr_store(), path="g-x", mode="w")
        array = group.create_array("windows/status", shape=(10,), chunks=(4,), dtype="uint8", fill_value=0)
        array[:] = np.arange(10, dtype="uint8")
        array.resize((12,))
        array[10:] = [7, 7]
        again = zarr.open_group(storage.zarr_store(read_only=True), path="g-x", mode="r")
        assert again["windows/status"][:].tolist() == [*range(10), 7, 7]
        assert storage.exists("g-x/windows/status/c/2")

    # -- the lease --------------------------------------------------------------

    def test_the_lease_refuses_a_second_writer_and_fences_a_lapsed_one(self, storage: Storage):
        first = lease.acquire(storage, "first", ttl_s=60, renew_every_s=1)
        with pytest.raises(StoreLockedError, match="in use by another run"):
            lease.acquire(storage, "second", ttl_s=60, renew_every_s=1)
        lease.renew(storage, first, ttl_s=0.2)  # the first writer goes quiet and its lease expires
        time.sleep(0.3)  # let the short lease run out: the condition under test is elapsed time
        lease.acquire(storage, "second", ttl_s=60, renew_every_s=1)
        with pytest.raises(StoreLockedError, match="lost the write lease"):
            lease.renew(storage, first, ttl_s=60)  # fenced: it must stop writing
        lease.release(storage, "first")  # not the holder: nothing happens
        assert lease.read_lease(storage).owner == "second"
        lease.release(storage, "second")
        assert lease.read_lease(storage) is None

    def test_a_renewal_never_overwrites_a_lease_taken_while_it_renews(self, storage: Storage):
        held = lease.acquire(storage, "first", ttl_s=60, renew_every_s=1)
        outcome: dict = {}

        def renew():
            try:
                outcome["lease"] = lease.renew(storage, held, ttl_s=60)
            except StoreLockedError as exc:
                outcome["error"] = exc

        with lease._Mutex(storage):  # another run is taking the lease
            renewal = threading.Thread(target=renew)
            renewal.start()
            renewal.join(timeout=1.0)  # a renewal outside the mutex would be done by now
            thief = lease.Lease("second", "elsewhere", 1, time.time(), 1.0, time.time() + 60)
            storage.write("lease.json", json.dumps(thief.__dict__).encode())
        renewal.join()
        assert "lost the write lease" in str(outcome.get("error")), outcome
        assert lease.read_lease(storage).owner == "second"

    def test_a_renewal_that_cannot_take_the_mutex_keeps_a_lease_still_ours(self, storage: Storage, monkeypatch):
        """A mutex left by a process killed while taking the lease (on another host: not cleared at once)
        keeps everyone from taking the lease: the holder goes on, unrenewed, rather than stop its run."""
        monkeypatch.setattr(lease, "_MUTEX_WAIT_S", 0.3)
        held = lease.acquire(storage, "first", ttl_s=60, renew_every_s=1)
        with lease._Mutex(storage):
            assert lease.renew(storage, held, ttl_s=60) == held

    def test_a_kept_lease_outlives_its_time_to_live_and_fences_once_taken(self, storage: Storage):
        held = lease.acquire(storage, "driver", ttl_s=1.0, renew_every_s=0.2)
        with KeptLease(storage, held, ttl_s=1.0) as kept:
            wait_renewed(storage, since=held.renewed_at)  # the keeper is up
            deadline = time.time() + 2.5  # well past the time to live: renewals must keep it
            while time.time() < deadline:
                with pytest.raises(StoreLockedError, match="in use by another run"):
                    lease.acquire(storage, "intruder", ttl_s=60, renew_every_s=1)
                time.sleep(0.5)  # the intruder tries now and then: the condition under test is elapsed time
            kept.check()
            other = lease.Lease("thief", "elsewhere", 1, time.time(), 1.0, time.time() + 60)
            with lease._Mutex(storage):  # taken from under it, as a run takes a lease
                storage.write("lease.json", json.dumps(other.__dict__).encode())
            deadline = time.time() + 10
            with pytest.raises(StoreLockedError, match="lost the write lease"):
                while time.time() < deadline:
                    kept.check()  # the next renewal finds it
                    time.sleep(0.1)
        assert lease.read_lease(storage).owner == "thief"  # the keeper never overwrote it

    # -- a store on it ------------------------------------------------------------

    def test_a_store_grows_and_a_replacement_leaves_only_the_new_generation(self, storage: Storage):
        store = RunStore.create(storage, {"x": 1}, "fp", config={}, n_samples=1, horizon=1, chunk_windows=4)
        store.add_signals([_signal("a", [1, 2, 3])])
        store.add_signals([_signal("b", [3, 4, 5, 6, 7])])  # shares one window with a
        reopened = RunStore.open(storage)
        assert reopened.n_windows == 7 and [s.name for s in reopened.signals] == ["a", "b"]
        assert reopened.signal_rows(reopened.signal("b")).tolist() == [2, 3, 4, 5, 6]
        old = reopened.generation
        new = RunStore.create(storage, {"x": 2}, "fp2", config={}, n_samples=1, horizon=1, chunk_windows=4)
        assert RunStore.open(storage).generation == new.generation != old
        assert not [key for key in storage.list() if key.startswith(old)]
