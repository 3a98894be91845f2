"""The coordinator: the one owner of a run's window states and the only writer of its store.

It runs as an async Ray actor. Every state change happens on its event loop, between
awaits, so no lock guards the state; store I/O runs in a thread on snapshot copies.

Invariants:
- a window is DONE at most once; a later answer for it (a stale or duplicated lease,
  or one sent to a previous incarnation of the coordinator) is ignored;
- only invalid answers charge a window's retry budget (``attempts``); windows of a lost,
  hung or restarted worker go back to the queue uncharged, and are retried with the
  same seed, so their answer does not depend on what failed;
- a window's seed depends only on (run seed, its key, attempt): a resumed run samples
  exactly what an uninterrupted one would have, and the same window samples the same
  answers in any signal and any store;
- it serves the rows of the run's signals only (``signals``: name and data digest): a
  store may hold more, for signals this run does not name, or another version of one;
- signals may join while windows run (``add_signals``: the driver windows them as the first
  ones are answered); the run is finished only once every one is registered and settled,
  and a restarted coordinator learns from the registry which have joined;
- flushes are write-behind: accepted answers wait in memory at most one flush interval,
  so a crash loses at most that much work, and the state rebuilt from the store is
  exactly what was flushed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np

from sigray import lease as store_lease
from sigray.errors import StoreError
from sigray.keys import window_seed
from sigray.messages import AddedSignals, Batch, BatchReport, Progress
from sigray.store import DONE, FAILED, PENDING, NewSignal, RunStore, WindowRequest, WindowResults

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoordinatorSettings:
    """What the coordinator needs to (re)build itself from the store alone."""

    store_path: str
    owner: str  # the run's lease owner id; the same across coordinator restarts
    lease_ttl_s: float
    batch_size: int
    max_attempts: int
    seed: int
    flush_interval_s: float
    lease_timeout_s: float
    signals: tuple[tuple[str, str], ...]  # (name, data digest) of each of the run's signals, joined or to join


@dataclass(frozen=True)
class Health:
    """What the supervisor checks every second.

    ``seen``: workers that called this coordinator incarnation, ``uptime_s`` after it
    started. A live worker calls within one batch: one that has not called this incarnation
    for a lease timeout after both its start and the incarnation's is hung (after a restart
    it may hold a lease the new incarnation cannot time out, or none at all).
    """

    fatal: str | None
    timed_out: list[str]
    seen: frozenset[str]
    uptime_s: float


@dataclass
class _Lease:
    worker_id: str
    windows: np.ndarray
    deadline: float


class Coordinator:
    """Hands out batches of windows, takes validated answers back, flushes them to the store."""

    def __init__(self, settings: CoordinatorSettings):
        self.settings = settings
        self.store = RunStore.open(settings.store_path, read_only=False)
        self.lease = store_lease.acquire(
            self.store.storage, settings.owner, settings.lease_ttl_s, settings.flush_interval_s
        )
        self.status, self.attempts = self.store.read_state()
        self.status = self.status.copy()
        self.attempts = self.attempts.copy()
        self.requests = _RequestChunks(self.store)
        n = len(self.status)
        self.wanted = frozenset(settings.signals)
        self.joined: set[tuple[str, str]] = set()
        self.needed = np.zeros(n, dtype=bool)
        self.queued = np.zeros(n, dtype=bool)
        self.lease_of = np.full(n, -1, dtype=np.int64)
        self.queue: collections.deque[int] = collections.deque()
        self.n_needed = self.done = self.failed = self.resumed_settled = 0
        self._reset_buffer()
        self._count_the_last_answer_of_done_windows()
        self._need([e for e in self.store.signals if (e.name, e.digest) in self.wanted])
        self.leases: dict[int, _Lease] = {}
        # Lease ids never repeat across restarts: a report for a previous incarnation's
        # lease must not match (and end, or charge) a new lease of the same number.
        self.next_lease_id = time.time_ns()
        self.retries = 0
        self.requeued = 0
        self.prompt_tokens = [0, 0, 0]  # windows counted, their tokens, the most in one (answers asked this session)
        self.timed_out_workers: list[str] = []
        self.started = time.monotonic()
        self.seen_workers: set[str] = set()  # workers that called this incarnation
        self.lost_workers: set[str] = set()  # declared lost by the driver: never leased to again
        self.first_lease_at: float | None = None  # when work began, for the windows/s rate
        self.first_batch_at: float | None = None  # the same, Unix time: for the driver's timings
        self.finished_at: float | None = None  # when the last window settled
        self.fatal: str | None = None
        self.stopping = False
        self._work_available = asyncio.Event()
        self._no_leases = asyncio.Event()
        self._saved = (self.done, self.failed)  # counts as of the last flush
        self._finished = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._flusher: asyncio.Task | None = None
        self._update_events()
        log.info("coordinator ready: %d windows, %d done, %d failed", self.n_needed, self.done, self.failed)

    # -- workers ------------------------------------------------------------

    async def lease_batch(self, worker_id: str) -> Batch | None:
        """The next batch for ``worker_id``, waiting while others hold the last windows.

        Returns None when the run is finished or stopping: the worker should exit.
        """
        self._ensure_flusher()
        self.seen_workers.add(worker_id)
        while True:
            if self._finished.is_set() or self.stopping or self.fatal or worker_id in self.lost_workers:
                return None  # a lost worker's call still waiting here would take its own requeued windows
            windows = self._take(self.settings.batch_size)
            if windows.size:
                try:
                    requests = self.requests.get(windows)
                except StoreError as exc:  # a requests chunk damaged after the driver's repair
                    self.fatal = str(exc)
                    self._work_available.set()
                    return None
                return self._lease(worker_id, windows, requests)
            self._work_available.clear()
            await self._work_available.wait()

    async def report(self, report: BatchReport) -> None:
        """Record a batch's verdicts (see the module invariants)."""
        self.seen_workers.add(report.worker_id)
        counted = [tokens for tokens in report.prompt_tokens if tokens]
        if counted:
            windows, total, most = self.prompt_tokens
            self.prompt_tokens = [windows + len(counted), total + sum(counted), max(most, *counted)]
        held = self.leases.get(report.lease_id)
        if held is not None and held.worker_id != report.worker_id:
            held = None
        accepted = []
        for i, w in enumerate(report.windows.tolist()):
            if self.status[w] != PENDING:
                continue
            if report.answers[i] is not None:
                accepted.append(i)
                self._settle(w, DONE)
            elif held is not None:
                self.attempts[w] += 1
                self._dirty_attempts.add(w // self._chunk)
                if report.final and report.final[i]:
                    self._settle(w, FAILED)
                    self._reasons[w] = report.reasons[i]
                    log.info("window %d failed at once: %s", w, report.reasons[i])
                elif self.attempts[w] >= self.settings.max_attempts:
                    self._settle(w, FAILED)
                    tries = f"{self.attempts[w]} attempt{'s' if self.attempts[w] != 1 else ''}"
                    self._reasons[w] = f"no valid answer in {tries}; last: {report.reasons[i]}"
                    log.info("window %d failed after %d invalid answers: %s", w, self.attempts[w], report.reasons[i])
                else:
                    self.retries += 1
                    self._requeue(w)
        if accepted:
            rows = np.asarray(accepted)
            windows = report.windows[rows]
            self.attempts[windows] += 1
            self._dirty_attempts.update((windows // self._chunk).tolist())
            self._buffer_windows.append(windows)
            self._buffer_answers.extend(report.answers[i] for i in accepted)
            self._buffer_values.append(report.values[rows])
        if held is not None:
            self._release(report.lease_id)
        self._update_events()

    async def worker_lost(self, worker_id: str) -> int:
        """Requeue, uncharged, every window leased to ``worker_id``, and lease it nothing more;
        returns how many."""
        self.lost_workers.add(worker_id)
        lost = [lease_id for lease_id, held in self.leases.items() if held.worker_id == worker_id]
        count = sum(self._release(lease_id) for lease_id in lost)
        self.requeued += count
        self._update_events()
        return count

    # -- the driver ---------------------------------------------------------

    async def add_signals(self, new: list[NewSignal]) -> AddedSignals:
        """Register more of the run's signals (their windows join the queue at once).

        The driver windows a long list of signals while the first ones are answered (issue
        16.3); the coordinator writes them, as the store's one writer while windows run.
        A signal already registered with the same data is not written again, so a call
        repeated after a restart is harmless. Raises StoreError when the store cannot be
        written (the run then stops, as after a failed flush)."""
        async with self._flush_lock:  # no flush writes the window table while it grows
            if self.fatal:
                raise StoreError(self.fatal)
            held = {(e.name, e.digest): e for e in self.store.signals}
            before = self.store.n_windows
            try:
                # Renewing first checks we still own the store (fencing) before writing.
                self.lease = await asyncio.to_thread(
                    store_lease.renew, self.store.storage, self.lease, self.settings.lease_ttl_s
                )
                added = await asyncio.to_thread(
                    self.store.add_signals, [s for s in new if (s.name, s.digest) not in held]
                )
            except Exception as exc:  # noqa: BLE001 - as in flush: stop cleanly
                self.fatal = f"cannot save to store {self.settings.store_path}: {exc}"
                log.error(self.fatal)
                self._work_available.set()
                raise StoreError(self.fatal) from None
            entries = [added.get(s.name) or held[(s.name, s.digest)] for s in new]
            self._grow(self.store.n_windows)
            self.requests.forget_from(before)
            settled_before = self.done + self.failed
            self._need(entries)
            settled = self.done + self.failed - settled_before  # now: workers' reports go on during the await
            # `sigray status` counts the registered windows at once: say how many signals are still to join.
            to_add = len(self.wanted - self.joined)
            await asyncio.to_thread(self.store.record_progress, *self._saved, self.prompt_tokens, to_add)
        self._update_events()
        grown = self.store.n_windows - before
        log.info("%d signal(s) joined the run: %d new rows, %d windows already settled", len(new), grown, settled)
        return AddedSignals(entries, grown, settled)

    async def progress(self) -> Progress:
        now = time.monotonic()
        # The average since work began: batches finish in bursts, so a short window jitters.
        settled_here = self.done + self.failed - self.resumed_settled
        end = self.finished_at or now
        elapsed = end - (self.first_lease_at or end)
        # A live rate needs a second of history; a finished run's rate is exact however short.
        has_rate = elapsed > 0 and (self.finished_at is not None or elapsed > 1.0)
        return Progress(
            total=self.n_needed,
            done=self.done,
            failed=self.failed,
            in_flight=int(sum(len(h.windows) for h in self.leases.values())),
            retries=self.retries,
            requeued=self.requeued,
            windows_per_s=settled_here / elapsed if has_rate else 0.0,
            finished=self._finished.is_set(),
            prompt_tokens_mean=self.prompt_tokens[1] / self.prompt_tokens[0] if self.prompt_tokens[0] else None,
            prompt_tokens_max=self.prompt_tokens[2] or None,
            signals_to_add=len(self.wanted - self.joined),
            first_batch_at=self.first_batch_at,
        )

    async def health(self) -> Health:
        """A fatal error, workers whose lease timed out since the last call, and who has called."""
        timed_out, self.timed_out_workers = self.timed_out_workers, []
        uptime = time.monotonic() - self.started
        return Health(self.fatal, timed_out, frozenset(self.seen_workers), uptime)

    async def wait_finished(self) -> Progress:
        """Wait until every window is done or failed, flush, and report."""
        self._ensure_flusher()
        await self._finished.wait()
        await self.flush()
        if self._flusher is not None:
            self._flusher.cancel()
        return await self.progress()

    async def stop(self, grace_s: float = 20.0) -> Progress:
        """Stop handing out work (a SIGTERM, a deadline), let leased batches finish for up
        to ``grace_s``, flush, and report exactly what the store now holds."""
        self.stopping = True
        self._work_available.set()
        if self.leases:
            self._no_leases.clear()
            try:
                await asyncio.wait_for(self._no_leases.wait(), grace_s)
            except TimeoutError:
                log.warning("stopping with %d batches unanswered; they will be redone", len(self.leases))
        await self.flush()
        progress = await self.progress()
        return dataclasses.replace(progress, done=self._saved[0], failed=self._saved[1])

    async def flush(self) -> None:
        """Write accepted answers and changed states to the store, whole chunks at a time."""
        async with self._flush_lock:
            if self.fatal:
                return
            results, status, attempts, reasons = self._snapshot()
            try:
                # Renewing first checks we still own the store (fencing) before writing.
                self.lease = await asyncio.to_thread(
                    store_lease.renew, self.store.storage, self.lease, self.settings.lease_ttl_s
                )
                if results.windows.size or status or attempts:
                    await asyncio.to_thread(self.store.flush, results, status, attempts, reasons)
                    to_add = len(self.wanted - self.joined)
                    await asyncio.to_thread(self.store.record_progress, *self._saved, self.prompt_tokens, to_add)
            except Exception as exc:  # noqa: BLE001 - disk full, lost lease, damaged store: stop cleanly
                self.fatal = f"cannot save to store {self.settings.store_path}: {exc}"
                log.error(self.fatal)
                self._work_available.set()

    # -- internals ----------------------------------------------------------

    def _count_the_last_answer_of_done_windows(self) -> None:
        """A crash between a flush's status write and its attempts write leaves done windows
        one attempt short; a done window has had at least its accepted answer."""
        short = np.flatnonzero((self.status == DONE) & (self.attempts == 0))
        if short.size:
            self.attempts[short] = 1
            self._dirty_attempts.update((short // self.store.chunk_windows).tolist())

    @property
    def _chunk(self) -> int:
        return self.store.chunk_windows

    def _ensure_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while not self._finished.is_set():
            await asyncio.sleep(self.settings.flush_interval_s)
            self._expire_leases()
            await self.flush()

    def _expire_leases(self) -> None:
        now = time.monotonic()
        for lease_id in [i for i, h in self.leases.items() if h.deadline < now]:
            worker_id = self.leases[lease_id].worker_id
            self.timed_out_workers.append(worker_id)
            log.warning("lease %d of worker %s timed out; its windows go back to the queue", lease_id, worker_id)
            self.requeued += self._release(lease_id)
        self._update_events()

    def _take(self, k: int) -> np.ndarray:
        taken = []
        while self.queue and len(taken) < k:
            w = self.queue.popleft()
            self.queued[w] = False
            if self.status[w] == PENDING and self.lease_of[w] < 0:
                taken.append(w)
        return np.asarray(taken, dtype=np.int64)

    def _lease(self, worker_id: str, windows: np.ndarray, requests: list[WindowRequest]) -> Batch:
        self.first_lease_at = self.first_lease_at or time.monotonic()
        self.first_batch_at = self.first_batch_at or time.time()
        lease_id = self.next_lease_id
        self.next_lease_id += 1
        self.lease_of[windows] = lease_id
        self.leases[lease_id] = _Lease(worker_id, windows, time.monotonic() + self.settings.lease_timeout_s)
        return Batch(
            lease_id=lease_id,
            windows=windows,
            prompts=[r.prompt for r in requests],
            seeds=[
                window_seed(self.settings.seed, r.key, int(self.attempts[w]))
                for w, r in zip(windows.tolist(), requests)
            ],
            max_digits=[r.max_digits for r in requests],
            max_tokens=[r.max_tokens for r in requests],
        )

    def seed_for(self, window: int, attempt: int) -> int:
        """The seed ``window`` is asked with at ``attempt`` (its key is read with its request)."""
        return window_seed(self.settings.seed, self.requests.get(np.array([window]))[0].key, attempt)

    def _release(self, lease_id: int) -> int:
        """End a lease; its windows still pending go back to the queue. Returns how many."""
        held = self.leases.pop(lease_id)
        self.lease_of[held.windows] = -1
        pending = held.windows[self.status[held.windows] == PENDING].tolist()
        for w in pending:
            self._requeue(w)
        return len(pending)

    def _requeue(self, w: int) -> None:
        if not self.queued[w]:
            self.queued[w] = True
            self.queue.append(w)

    def _settle(self, w: int, state: int) -> None:
        self.status[w] = state
        self._dirty_status.add(w // self._chunk)
        if state == DONE:
            self.done += 1
        else:
            self.failed += 1

    def _need(self, entries: list) -> None:
        """Serve the rows of ``entries`` (registered signals of the run) from now on: the
        pending ones are queued, the settled ones counted as resumed."""
        self.joined.update((e.name, e.digest) for e in entries)
        if not entries:
            return
        rows = np.unique(np.concatenate([self.store.signal_rows(e) for e in entries]))
        rows = rows[~self.needed[rows]]
        self.needed[rows] = True
        self.n_needed += len(rows)
        states = self.status[rows]
        done, failed = int(np.count_nonzero(states == DONE)), int(np.count_nonzero(states == FAILED))
        self.done, self.failed = self.done + done, self.failed + failed
        self.resumed_settled += done + failed
        pending = rows[states == PENDING]
        self.queued[pending] = True
        self.queue.extend(pending.tolist())

    def _grow(self, n: int) -> None:
        """Extend the per-row arrays to ``n`` rows (new rows: pending, never asked, not needed yet)."""
        more = n - len(self.status)
        if more > 0:
            self.status = np.concatenate([self.status, np.full(more, PENDING, dtype=self.status.dtype)])
            self.attempts = np.concatenate([self.attempts, np.zeros(more, dtype=self.attempts.dtype)])
            self.needed = np.concatenate([self.needed, np.zeros(more, dtype=bool)])
            self.queued = np.concatenate([self.queued, np.zeros(more, dtype=bool)])
            self.lease_of = np.concatenate([self.lease_of, np.full(more, -1, dtype=np.int64)])

    def _update_events(self) -> None:
        if not self.leases:
            self._no_leases.set()
        if self.done + self.failed == self.n_needed and self.joined >= self.wanted:
            if not self._finished.is_set() and self.first_lease_at:
                self.finished_at = time.monotonic()
            self._finished.set()
            self._work_available.set()
        elif self.queue:
            self._work_available.set()

    def _reset_buffer(self) -> None:
        self._buffer_windows: list[np.ndarray] = []
        self._buffer_answers: list[list[str]] = []
        self._buffer_values: list[np.ndarray] = []
        self._dirty_status: set[int] = set()
        self._dirty_attempts: set[int] = set()
        self._reasons: dict[int, str] = {}

    def _snapshot(self) -> tuple[WindowResults, dict[int, np.ndarray], dict[int, np.ndarray], dict[int, str]]:
        """Copies of everything to flush, taken atomically on the event loop."""
        store = self.store
        if self._buffer_windows:
            windows = np.concatenate(self._buffer_windows)
            values = np.concatenate(self._buffer_values).astype(np.float32)
        else:
            windows = np.zeros(0, dtype=np.int64)
            values = np.zeros((0, store.n_samples, store.horizon), dtype=np.float32)
        results = WindowResults(windows=windows, answers=self._buffer_answers, values=values)
        status = {c: self.status[self._chunk_slice(c)].copy() for c in self._dirty_status}
        attempts = {c: self.attempts[self._chunk_slice(c)].copy() for c in self._dirty_attempts}
        reasons = self._reasons
        self._saved = (self.done, self.failed)
        self._reset_buffer()
        return results, status, attempts, reasons

    def _chunk_slice(self, chunk: int) -> slice:
        start = chunk * self._chunk
        return slice(start, min(start + self._chunk, len(self.status)))


class _RequestChunks:
    """Requests (prompt and limits) read from the store a chunk at a time, when first leased.

    A restarted coordinator is ready once it has read status and attempts (two bytes a
    window), not every prompt (1e6 windows: ~0.6 GB). Windows are leased mostly in order,
    so a handful of cached chunks serves nearly every batch; a requeued window far behind
    costs one chunk read.
    """

    def __init__(self, store: RunStore, cached_chunks: int = 8):
        self.store = store
        self.cached_chunks = cached_chunks
        self.chunks: collections.OrderedDict[int, list[WindowRequest]] = collections.OrderedDict()

    def forget_from(self, row: int) -> None:
        """Drop cached chunks from the one holding ``row`` on: the table grew there."""
        for chunk in [c for c in self.chunks if c >= row // self.store.chunk_windows]:
            del self.chunks[chunk]

    def get(self, windows: np.ndarray) -> list[WindowRequest]:
        size = self.store.chunk_windows
        return [self._chunk(w // size)[w % size] for w in windows.tolist()]

    def _chunk(self, chunk: int) -> list[WindowRequest]:
        if chunk in self.chunks:
            self.chunks.move_to_end(chunk)
        else:
            size = self.store.chunk_windows
            self.chunks[chunk] = self.store.read_requests(chunk * size, (chunk + 1) * size)
            if len(self.chunks) > self.cached_chunks:
                self.chunks.popitem(last=False)
        return self.chunks[chunk]
