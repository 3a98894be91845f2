"""The coordinator's bookkeeping, driven directly (no Ray) against a real store on disk."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sigray.coordinator import Coordinator, CoordinatorSettings
from sigray.keys import window_key
from sigray.lease import new_owner_id
from sigray.messages import BatchReport
from sigray.store import DONE, FAILED, PENDING, NewSignal, RunStore, WindowRequest

N = 10


def _signal(name: str, windows: range) -> NewSignal:
    prompts = [f"{w},{w + 1},{w + 2}" for w in windows]
    requests = [WindowRequest(window_key("fp", p, 3, 8), p, 3, 8) for p in prompts]
    points = np.arange(len(prompts), dtype=np.int64)
    return NewSignal(name, f"digest-{name}", points, points.reshape(-1, 1).astype(float), requests)


def make_store(path: str, extra: bool = False) -> str:
    store = RunStore.create(path, {"x": 1}, "fp", config={}, n_samples=1, horizon=1, chunk_windows=4)
    store.add_signals(
        [_signal("a", range(6)), _signal("b", range(6, N))] + ([_signal("c", range(50, 53))] if extra else [])
    )
    return path


def coordinator(
    path: str, owner: str | None = None, batch_size: int = 4, max_attempts: int = 2, names=("a", "b")
) -> Coordinator:
    settings = CoordinatorSettings(
        store_path=path,
        owner=owner or new_owner_id(),
        lease_ttl_s=30,
        batch_size=batch_size,
        max_attempts=max_attempts,
        seed=7,
        flush_interval_s=3600,
        lease_timeout_s=3600,
        signals=tuple((name, f"digest-{name}") for name in names),
    )
    return Coordinator(settings)


def report(batch, worker="w", valid=True) -> BatchReport:
    k = len(batch.windows)
    answers = [[f",{w}"] if valid else None for w in batch.windows.tolist()]
    values = np.where(valid, batch.windows.astype(np.float32), np.nan).reshape(k, 1, 1)
    return BatchReport(batch.lease_id, worker, batch.windows, answers, values, ["" if valid else "bad"] * k)


def run(coro):
    return asyncio.run(coro)


def test_valid_answers_are_done_once_and_survive_a_reopen(tmp_path):
    path = make_store(str(tmp_path / "s"))
    owner = new_owner_id()

    async def scenario():
        c = coordinator(path, owner)
        batch = await c.lease_batch("w")
        await c.report(report(batch))
        await c.report(report(batch))  # a duplicated report changes nothing
        await c.flush()
        return c, batch

    c, batch = run(scenario())
    assert c.done == 4
    status, attempts = RunStore.open(path).read_state()
    assert status[batch.windows].tolist() == [DONE] * 4
    assert attempts[batch.windows].tolist() == [1] * 4
    assert RunStore.open(path).read_answers()[batch.windows, 0].tolist() == [f",{w}" for w in batch.windows]
    assert (RunStore.open(path).read_reasons() == "").all()
    rebuilt = coordinator(path, owner)
    assert rebuilt.done == 4 and len(rebuilt.queue) == N - 4


def test_invalid_answers_are_retried_with_a_new_seed_then_failed_with_their_reason(tmp_path):
    path = make_store(str(tmp_path / "s"))

    async def scenario():
        c = coordinator(path, batch_size=N, max_attempts=2)
        first = await c.lease_batch("w")
        await c.report(report(first, valid=False))
        second = await c.lease_batch("w")
        await c.report(report(second, valid=False))
        await c.flush()
        return c, first, second

    c, first, second = run(scenario())
    assert sorted(second.windows.tolist()) == sorted(first.windows.tolist())
    assert set(first.seeds).isdisjoint(second.seeds)
    assert c.failed == N and c.retries == N
    assert (c.status == FAILED).all() and c._finished.is_set()
    assert list(RunStore.open(path).read_reasons()) == ["no valid answer in 2 attempts; last: bad"] * N


def test_a_window_the_engine_refused_for_good_fails_at_once_with_its_reason_and_the_rest_go_on(tmp_path):
    path = make_store(str(tmp_path / "s"))

    async def scenario():
        c = coordinator(path, batch_size=N, max_attempts=5)
        batch = await c.lease_batch("w")
        k = len(batch.windows)
        answers = [None] + [[f",{w}"] for w in batch.windows.tolist()[1:]]
        values = batch.windows.astype(np.float32).reshape(k, 1, 1)
        reasons = ["refused by the engine: too long"] + [""] * (k - 1)
        final = [True] + [False] * (k - 1)
        await c.report(BatchReport(batch.lease_id, "w", batch.windows, answers, values, reasons, final))
        await c.flush()
        return c, batch

    c, batch = run(scenario())
    refused = int(batch.windows[0])
    assert c.failed == 1 and c.retries == 0 and c.done == N - 1 and c._finished.is_set()
    status, attempts = RunStore.open(path).read_state()
    assert status[refused] == FAILED and attempts[refused] == 1
    assert RunStore.open(path).read_reasons()[refused] == "refused by the engine: too long"


def test_a_lost_worker_windows_are_requeued_without_charge_and_with_the_same_seed(tmp_path):
    path = make_store(str(tmp_path / "s"))

    async def scenario():
        c = coordinator(path)
        lost = await c.lease_batch("dead")
        requeued = await c.worker_lost("dead")
        again = await c.lease_batch("alive")
        return c, lost, requeued, again

    c, lost, requeued, again = run(scenario())
    assert requeued == 4
    assert c.attempts.sum() == 0
    retaken = dict(zip(again.windows.tolist(), again.seeds))
    for w, seed in zip(lost.windows.tolist(), lost.seeds):
        if w in retaken:
            assert retaken[w] == seed


def test_a_lost_workers_waiting_lease_call_does_not_take_its_own_requeued_windows(tmp_path):
    """A worker keeps one lease call waiting while it works; when it dies, that call may still be
    served after the driver declared it lost: it must get nothing, or the windows wait out a lease timeout."""
    path = make_store(str(tmp_path / "s"))

    async def scenario():
        c = coordinator(path, batch_size=N)
        first = await c.lease_batch("w")  # every window, to the worker that will die
        waiting = asyncio.ensure_future(c.lease_batch("w"))  # its next call, waiting for work
        await asyncio.sleep(0)  # a yield to the event loop (no timing): the call reaches its wait
        assert await c.worker_lost("w") == N
        again = await asyncio.wait_for(waiting, 5)
        other = await c.lease_batch("replacement")
        return first, again, other

    first, again, other = run(scenario())
    assert len(first.windows) == N and again is None
    assert sorted(other.windows.tolist()) == sorted(first.windows.tolist())


def test_a_stale_invalid_report_charges_nothing_but_a_stale_valid_one_is_kept(tmp_path):
    path = make_store(str(tmp_path / "s"))

    async def scenario():
        c = coordinator(path)
        batch = await c.lease_batch("slow")
        await c.worker_lost("slow")  # e.g. its lease timed out
        await c.report(report(batch, worker="slow", valid=False))
        charged = int(c.attempts.sum())
        await c.report(report(batch, worker="slow", valid=True))
        return c, charged

    c, charged = run(scenario())
    assert charged == 0
    assert c.done == 4
    assert int(np.count_nonzero(c.status == PENDING)) == N - 4


def test_seeds_depend_only_on_the_windows_content_and_attempt(tmp_path):
    c1 = coordinator(make_store(str(tmp_path / "a")))
    c2 = coordinator(make_store(str(tmp_path / "b"), extra=True), names=("a", "b", "c"))
    seeds = {(w, a): c1.seed_for(w, a) for w in range(N) for a in range(3)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(c2.seed_for(w, a) == s for (w, a), s in seeds.items())  # other signals beside them change nothing


def test_only_the_runs_signals_are_served(tmp_path):
    path = make_store(str(tmp_path / "s"), extra=True)

    async def scenario():
        c = coordinator(path, batch_size=100, names=("c",))
        batch = await c.lease_batch("w")
        await c.report(report(batch))
        return c, batch

    c, batch = run(scenario())
    assert sorted(batch.windows.tolist()) == [10, 11, 12]  # signal c's rows, and nothing of a or b
    assert c._finished.is_set() and (c.status[:N] == PENDING).all()


def test_the_run_finishes_when_every_window_is_settled(tmp_path):
    path = make_store(str(tmp_path / "s"))

    async def scenario():
        c = coordinator(path, batch_size=3)
        while (batch := await c.lease_batch("w")) is not None:
            await c.report(report(batch))
        progress = await c.wait_finished()
        return progress

    progress = run(scenario())
    assert progress.finished and progress.done == N
    status, _ = RunStore.open(path).read_state()
    assert (status == DONE).all()


def test_a_second_owner_is_refused_while_the_first_lives(tmp_path):
    from sigray.errors import StoreLockedError

    path = make_store(str(tmp_path / "s"))
    coordinator(path, owner="first")
    with pytest.raises(StoreLockedError, match="in use by another run"):
        coordinator(path, owner="second")


def test_a_finished_run_reports_its_rate_up_to_its_last_window(tmp_path):
    """A run shorter than a second still has a rate, and waiting after the end does not lower it."""
    path = make_store(str(tmp_path / "s"))

    async def scenario():
        c = coordinator(path, batch_size=N)
        live = await c.progress()
        batch = await c.lease_batch("w")
        await c.report(report(batch))
        first = await c.progress()
        await asyncio.sleep(0.2)  # time passing after the end, not a race
        return live, first, await c.progress()

    live, first, later = run(scenario())
    assert live.windows_per_s == 0.0 and not live.finished
    assert first.finished and first.windows_per_s > 0
    assert later.windows_per_s == first.windows_per_s


def test_signals_added_to_a_live_run_are_served_once_and_the_run_waits_for_every_one(tmp_path):
    """The driver adds signals while windows run (issue 16.3): their windows join the queue, a
    window another signal already has is not asked again, a repeated call (after a restart)
    changes nothing, and the run is finished only when every signal has joined and settled."""
    path = make_store(str(tmp_path / "s"))
    owner = new_owner_id()
    late = [_signal("c", range(8, 13)), _signal("d", range(50, 52))]  # c shares rows 8 and 9 with b

    async def scenario():
        c = coordinator(path, owner, batch_size=100, names=("a", "b", "c", "d"))
        first = await c.lease_batch("w")
        await c.report(report(first))
        assert not c._finished.is_set()  # a and b are settled, c and d are still to join
        assert (await c.progress()).signals_to_add == 2
        added = await c.add_signals(late)
        again = await c.add_signals(late)  # as after a restart: nothing written twice
        second = await c.lease_batch("w")
        await c.report(report(second))
        await c.flush()
        return c, first, added, again, second

    c, first, added, again, second = run(scenario())
    assert sorted(first.windows.tolist()) == list(range(N))
    # c's rows 8 and 9 were b's, already the run's: 5 new rows, none settled that the run did not count
    assert [e.name for e in added.entries] == ["c", "d"] and added.added_windows == 5 and added.settled == 0
    assert again.entries == added.entries and again.added_windows == 0 and again.settled == 0
    assert sorted(second.windows.tolist()) == list(range(N, N + 5))  # only the new rows
    assert c._finished.is_set() and c.done == N + 5
    store = RunStore.open(path)
    assert [e.name for e in store.signals] == ["a", "b", "c", "d"] and store.n_windows == N + 5
    assert (store.read_status() == DONE).all() and (store.read_state()[1] == 1).all()


def test_answers_reported_while_signals_are_added_are_not_counted_as_resumed(tmp_path):
    """A worker's report handled while ``add_signals`` writes its progress sample (an await) is
    this run's work: counting it among the windows found settled made ``computed`` short."""
    import threading

    path = make_store(str(tmp_path / "s"))

    async def scenario():
        c = coordinator(path, batch_size=100, names=("a", "b", "c"))
        batch = await c.lease_batch("w")
        writing, go_on = threading.Event(), threading.Event()
        record = c.store.record_progress

        def held_record(*args):  # the progress sample's write, held until the report is in
            writing.set()
            go_on.wait(30)
            return record(*args)

        c.store.record_progress = held_record
        adding = asyncio.create_task(c.add_signals([_signal("c", range(50, 52))]))
        await asyncio.to_thread(writing.wait, 30)
        await c.report(report(batch))  # the coordinator handles it while the addition awaits its write
        go_on.set()
        return c, await adding

    c, added = run(scenario())
    assert added.settled == 0 and c.resumed_settled == 0 and c.done == N


def test_a_restarted_coordinator_serves_the_signals_that_joined_and_waits_for_the_rest(tmp_path):
    path = make_store(str(tmp_path / "s"))
    owner = new_owner_id()

    async def before_the_crash():
        c = coordinator(path, owner, batch_size=100, names=("a", "b", "c", "d"))
        await c.add_signals([_signal("c", range(20, 23))])

    async def after_it():
        c = coordinator(path, owner, batch_size=100, names=("a", "b", "c", "d"))
        batch = await c.lease_batch("w")
        await c.report(report(batch))
        waiting = not c._finished.is_set()
        await c.add_signals([_signal("d", range(30, 31))])
        last = await c.lease_batch("w")
        await c.report(report(last))
        return c, batch, waiting, last

    run(before_the_crash())
    c, batch, waiting, last = run(after_it())
    assert sorted(batch.windows.tolist()) == list(range(N + 3))  # a, b and c, which joined before the crash
    assert waiting and last.windows.tolist() == [N + 3] and c._finished.is_set()


def test_another_version_of_a_signal_is_not_served_until_the_runs_version_joins(tmp_path):
    path = make_store(str(tmp_path / "s"))

    async def scenario():
        c = coordinator(path, batch_size=100, names=("a",))
        c.wanted = frozenset({("a", "digest-a"), ("b", "new-digest")})  # b was given with other data
        batch = await c.lease_batch("w")
        return batch, c._finished.is_set()

    batch, finished = run(scenario())
    assert sorted(batch.windows.tolist()) == list(range(6)) and not finished
