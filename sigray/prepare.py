"""Make a store ready for a planned run, under its write lease.

In order: refuse what is not a sigray store; take the lease (a live run refuses this one,
``--new`` included); create the store, replace it (``--new``), migrate it (format 1), or
check that it holds the same generation; repair damage; register the run's signals (or,
for a run that computes, the first of them: ``sigray.feed`` adds the rest), growing the
window table by the requests it does not hold yet. Every refusal comes
before anything is written, and every step is crash-safe on its own (see
``sigray.store.run_store``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from sigray import lease as store_lease
from sigray.config import fingerprint
from sigray.errors import SigrayError, StoreError
from sigray.lease_keeper import KeptLease
from sigray.plan import PlannedSignal, RunPlan
from sigray.storage import open_storage
from sigray.store import DONE, FAILED, NewSignal, RunStore, SignalEntry, WindowResults, read_pointer
from sigray.store.format1 import Format1Store, legacy_identity, legacy_max_digits
from sigray.store.run_store import mismatch_error

log = logging.getLogger(__name__)
_LEASE_FILES = ("lease.json", "lease.mutex")
# Windows registered at once: a batch holds a request (prompt, key) per window until written.
REGISTER_WINDOWS = 8192


@dataclass
class PreparedStore:
    """A store ready for a run, whose lease ``owner`` holds."""

    store: RunStore
    lease: store_lease.Lease  # held by the run's owner
    kept: KeptLease  # renews ``lease`` until closed; check it before writing
    entries: list[SignalEntry]  # the run's registered signals; those in ``unregistered`` join as they are added
    added_windows: int = 0  # rows the run's new signals added to the window table
    notes: list[str] = field(default_factory=list)  # what was done to the store (replaced, migrated, repaired)
    unregistered: list[PlannedSignal] = field(default_factory=list)  # new signals the run adds as it goes

    def register_next(self, plan: RunPlan, max_windows: int = REGISTER_WINDOWS) -> None:
        """Window and register the next batch of ``unregistered`` here (the run's one writer
        until its coordinator starts)."""
        batch = next(registration_batches(plan, self.unregistered, max_windows))
        before = self.store.n_windows
        self.kept.check()
        entries = self.store.add_signals(batch)
        self.joined([entries[s.name] for s in batch], self.store.n_windows - before)

    def joined(self, entries: list[SignalEntry], added_windows: int) -> None:
        """``entries`` were registered (here, or by the run's coordinator), growing the table by ``added_windows``."""
        names = {entry.name for entry in entries}
        self.unregistered = [p for p in self.unregistered if p.name not in names]
        self.entries += entries
        self.added_windows += added_windows

    @property
    def rows(self) -> np.ndarray:
        """Every row the run's signals use, once."""
        if not self.entries:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([self.store.signal_rows(e) for e in self.entries]))


def prepare_store(plan: RunPlan, owner: str, new: bool = False, first_windows: int | None = None) -> PreparedStore:
    """Open (or create, replace, migrate) the store for ``plan`` and take its lease, kept
    renewed from here on (registering a million windows outlasts the lease's time to live).

    ``first_windows``: register new signals up to about this many windows (one signal at
    least) and leave the rest in ``unregistered``, for the run to add while its first windows
    are answered (``sigray.feed``); None registers them all.

    Raises StoreLockedError while another run holds the lease, ConfigMismatchError when
    the store's generation differs, StoreError for a place that is not a sigray store.
    The caller closes ``kept`` and releases the lease (``sigray.lease.release``).
    """
    config = plan.config
    storage = open_storage(config.store)
    storage.check_root()
    pointer = read_pointer(storage)
    if pointer is None and not _holds_nothing(storage):
        raise StoreError(
            f"{storage.url} holds files but no sigray store; sigray neither writes into nor deletes folders it did "
            "not make. Choose an empty or new --store."
        )
    lease = store_lease.acquire(storage, owner, config.store_lease_s, config.flush_interval_s)
    kept = KeptLease(storage, lease, config.store_lease_s)
    try:
        notes = []
        if pointer is None or new:
            store = _create(plan, storage)
            if pointer is not None:
                notes.append("replaced what the store held with a new, empty run (--new)")
        elif pointer["format_version"] == 1:
            store = _migrate_format1(plan, storage)
            notes.append("migrated the store from format 1 (answers kept; pending windows get new seeds)")
        else:
            store = RunStore.open(storage, read_only=False)
            store.check_identity(plan.identity, plan.fingerprint)
            removed = store.collect_garbage()
            if removed:
                notes.append(f"removed what an interrupted replacement left: {', '.join(removed)}")
        notes += store.repair(_KnownRequests(plan, store))
        changed = [p for p in plan.plans if _registered_digest(store, p.name) != p.digest]
        for held, p in ((store.signal(p.name), p) for p in changed):
            if held is not None:
                notes.append(_new_version(held, p.signal))
        new_names = {p.name for p in changed}
        held = [store.signal(p.name) for p in plan.plans if p.name not in new_names]
        prepared = PreparedStore(store, lease, kept, held, notes=notes, unregistered=changed)
        while prepared.unregistered:
            prepared.register_next(plan, first_windows or REGISTER_WINDOWS)
            if first_windows is not None:
                break
        return prepared
    except BaseException:
        kept.close()
        store_lease.release(storage, owner)
        raise


def registration_batches(
    plan: RunPlan, signals: list[PlannedSignal], max_windows: int = REGISTER_WINDOWS, max_s: float | None = None
) -> Iterator[list[NewSignal]]:
    """``signals`` windowed with sigllm (where not done yet) and packed for ``RunStore.add_signals``,
    lazily: a batch ends past ``max_windows`` windows, past the plan's memory budget, or once
    windowing it took ``max_s`` seconds, so what a batch holds (a request and a prompt per
    window) stays bounded however large the run (issue 16.2). Raises InputError naming a
    signal sigllm cannot window."""
    batch, windows, held_mb, started = [], 0, 0.0, time.monotonic()
    for signal_plan in signals:
        batch.append(plan.new_signal(signal_plan))  # holds its requests until they are written
        windows += signal_plan.n_windows
        held_mb += signal_plan.held_mb()
        plan.memory.settle(signal_plan)
        late = max_s is not None and time.monotonic() - started > max_s
        if windows >= max_windows or held_mb > plan.memory.mb or late:
            yield batch
            batch, windows, held_mb, started = [], 0, 0.0, time.monotonic()
    if batch:
        yield batch


def _holds_nothing(storage) -> bool:
    return storage.is_empty() or all(key in _LEASE_FILES for key in storage.list())


def _new_version(held, signal) -> str:
    """A signal name the store knows, given other data: an extension, or (often a mistake) other data."""
    points = len(signal.timestamps)
    how = (
        f"extended from {held.n_points} to {points} points"
        if points > held.n_points
        else (f"its data changed ({held.n_points} points held, {points} given)")
    )
    return (
        f"signal {signal.name!r}: {how}; its results are for this version, and windows shared with the one held "
        "are not asked again (if this is another signal, give it another name)"
    )


def _registered_digest(store: RunStore, name: str) -> str | None:
    entry = store.signal(name)
    return None if entry is None else entry.digest


class _KnownRequests(Mapping):
    """Row -> request for the run's signals the store holds with the same data: what
    ``repair`` may rewrite a damaged requests chunk from. Built when ``repair`` first asks (after
    damage), not on every run: its index is a Python object per window. A signal is
    preprocessed only when one of its rows is asked for."""

    def __init__(self, plan: RunPlan, store: RunStore):
        self._plan, self._store = plan, store

    @functools.cached_property
    def _owner(self) -> dict[int, tuple]:
        owner = {}
        for signal_plan in self._plan.plans:
            entry = self._store.signal(signal_plan.name)
            if entry is not None and entry.digest == signal_plan.digest:
                for position, row in enumerate(self._store.signal_rows(entry).tolist()):
                    owner[row] = (signal_plan, position)
        return owner

    def __getitem__(self, row: int):
        signal_plan, position = self._owner[row]
        requests = signal_plan.requests
        if position >= len(requests):  # sigllm's preprocessing changed since the store was made
            raise KeyError(row)
        return requests[position]

    def __contains__(self, row) -> bool:
        return row in self._owner  # without preprocessing the row's signal

    def __iter__(self):
        return iter(self._owner)

    def __len__(self) -> int:
        return len(self._owner)


def settled_signals(path: str, generation: str) -> dict[str, str]:
    """The signals (name -> data digest) the store at ``path`` holds under the generation
    fingerprinted ``generation`` with every window answered or failed: nothing of them will
    be asked of an engine (``sigray.plan.make_plan``'s ``settled``). Empty when there is no
    such store or it cannot be read (``prepare_store`` then says why, under the lease)."""
    try:
        store = RunStore.open(path)
        if store.fingerprint != generation:
            return {}
        status = store.read_status()
        settled = np.isin(status, (DONE, FAILED))
        return {e.name: e.digest for e in store.signals if settled[store.signal_rows(e)].all()}
    except (SigrayError, OSError):
        return {}


def _create(plan: RunPlan, storage, live: bool = True) -> RunStore:
    store = RunStore.create(
        storage,
        plan.identity,
        plan.fingerprint,
        plan.config.to_json(),
        n_samples=plan.sampling.n,
        horizon=plan.answers.horizon,
        chunk_windows=plan.config.chunk_windows,
        extra={"pipeline_base_spec": plan.pipeline.base_spec},
        live=live,
    )
    if plan.normal is not None:
        normal = plan.normal
        store.write_normal(normal.timestamps, normal.values.reshape(len(normal.values), -1), normal.digest())
    return store


def _migrate_format1(plan: RunPlan, storage) -> RunStore:
    """A format-1 store made by this very run becomes a format-2 store with its answers.

    Its answers are matched to the new window table by prompt; the new generation goes
    live only when whole (the pointer replaces format 1's root metadata last), then
    format 1's arrays are deleted.
    """
    old = Format1Store.open(storage)
    sep = getattr(plan.answers, "sep", ",")
    max_digits = legacy_max_digits([p.windows for p in plan.plans], sep)
    legacy = legacy_identity(
        plan.config,
        plan.pipeline.spec,
        {p.name: p.digest for p in plan.plans},
        plan.answers.format1_identity(max_digits),
        None if plan.normal is None else plan.normal.digest(),
    )
    if fingerprint(legacy) != old.fingerprint:
        error = mismatch_error(storage.url, old.identity, legacy)
        raise type(error)(
            f"{error} (The store has format 1: run once with the settings and signals it was made with to migrate "
            "it; after that, post-processing settings may change and signals may be added.)"
        )
    store = _create(plan, storage, live=False)
    store.add_signals([plan.new_signal(p) for p in plan.plans])
    settled = old.answers_by_prompt()
    prompts = store.read_prompts()
    status, attempts = store.read_state()
    status, attempts = status.copy(), attempts.copy()
    rows, answers, values, reasons = [], [], [], {}
    for row, prompt in enumerate(prompts):
        if prompt not in settled:
            continue
        state, tries, texts, parsed = settled[prompt]
        status[row], attempts[row] = state, tries
        if state == DONE:
            rows.append(row)
            answers.append([str(t) for t in texts])
            values.append(parsed)
        elif state == FAILED:
            reasons[row] = "failed before the store was migrated from format 1 (reason not recorded)"
    chunks = range(-(-len(status) // store.chunk_windows))
    size = store.chunk_windows
    results = WindowResults(
        np.asarray(rows, dtype=np.int64),
        answers,
        np.asarray(values, dtype=np.float32).reshape(len(rows), store.n_samples, store.horizon),
    )
    store.flush(
        results,
        {c: status[c * size : (c + 1) * size] for c in chunks},
        {c: attempts[c * size : (c + 1) * size] for c in chunks},
        reasons,
    )
    store.make_live()
    log.info("store %s: migrated from format 1 (%d windows settled)", storage.url, len(rows) + len(reasons))
    return store
