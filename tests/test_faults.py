"""Real faults during a run (in this test process's Ray cluster): a killed coordinator, a
killed worker actor, a hung engine. Each time the run must complete with every window
done exactly once, no retry budget charged, and the answers of an uninterrupted run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import sigray
from sigray.store import DONE, RunStore
from tests.conftest import nab_signal

NAME = "ambient_temperature_system_failure"  # 1,175 windows
FAST = {"engine": "test-double", "flush_interval_s": 0.5, "batch_size": 4, "chunk_windows": 256, "workers": 2}


@pytest.fixture(scope="module")
def signal() -> str:
    return nab_signal(NAME)


@pytest.fixture(scope="module")
def reference(ray_session, signal, tmp_path_factory) -> str:
    """The store of an uninterrupted run with the same result-changing settings."""
    store = str(tmp_path_factory.mktemp("reference") / "run")
    sigray.run([signal], store, **FAST)
    return store


class BackgroundRun:
    """``sigray.run`` in a thread, so the test can break things while it runs."""

    def __init__(self, signal: str, store: str, **settings):
        self.store = store
        self.outcome: dict = {}
        self.thread = threading.Thread(target=self._run, args=(signal, store, settings), daemon=True)
        self.thread.start()

    def _run(self, signal, store, settings):
        try:
            self.outcome["result"] = sigray.run([signal], store, **settings)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.outcome["error"] = exc

    def wait_for_done(self, at_least: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.thread.is_alive(), f"the run ended early: {self.outcome}"
            try:
                status, _ = RunStore.open(self.store, read_only=True).read_state()
                if np.count_nonzero(status == DONE) >= at_least:
                    return
            except sigray.StoreError:
                pass  # not created yet
            time.sleep(0.1)  # polling interval of an observer, not a race fix
        raise AssertionError("the run made no progress")

    def result(self):
        self.thread.join(timeout=300)
        assert not self.thread.is_alive(), "the run did not finish"
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["result"]


def _actor(prefix: str):
    import ray

    names = [n for n in ray.util.list_named_actors() if n.startswith(prefix)]
    assert names, f"no live actor named {prefix}*"
    return ray.get_actor(names[0])


def _assert_complete_and_identical(store: str, reference: str) -> None:
    status, attempts = RunStore.open(store).read_state()
    assert (status == DONE).all(), "every window done"
    assert (attempts == 1).all(), "no retry budget charged for a fault"
    assert (RunStore.open(store).read_answers() == RunStore.open(reference).read_answers()).all()


def test_a_killed_coordinator_is_restarted_rebuilds_from_the_store_and_the_run_completes(
    ray_session, signal, reference, tmp_path
):
    import ray

    run = BackgroundRun(signal, str(tmp_path / "run"), **FAST, engine_options={"delay_s": 0.1})
    run.wait_for_done(200)
    ray.kill(_actor("sigray-coordinator-"), no_restart=False)  # Ray restarts it (max_restarts=-1)
    result = run.result()
    _assert_complete_and_identical(run.store, reference)
    assert result.computed_windows == 1175
    assert NAME in result.anomalies


@pytest.mark.extended  # a SIGKILLed worker process: test_run.py, default suite
def test_a_worker_actor_killed_mid_batch_is_replaced_and_its_windows_requeued_uncharged(
    ray_session, signal, reference, tmp_path
):
    import ray

    run = BackgroundRun(signal, str(tmp_path / "run"), **FAST, engine_options={"delay_s": 0.1})
    run.wait_for_done(200)
    ray.kill(_actor("sigray-worker-"), no_restart=True)
    result = run.result()
    assert result.workers_replaced >= 1 and result.requeued >= 1
    _assert_complete_and_identical(run.store, reference)


def test_workers_still_loading_their_engine_when_the_coordinator_restarts_are_waited_for(
    ray_session, signal, reference, tmp_path
):
    """A restarted coordinator has not heard from any worker yet; those loading a model (minutes for a
    large one) are not hung, however short the lease timeout."""
    import ray

    options = {"load_s": 12.0, "delay_s": 0.01}
    run = BackgroundRun(signal, str(tmp_path / "run"), **FAST, lease_timeout_s=5.0, engine_options=options)
    deadline = time.monotonic() + 60
    while not [n for n in ray.util.list_named_actors() if n.startswith("sigray-worker-")]:
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.1)  # polling interval of an observer, not a race fix
    ray.kill(_actor("sigray-coordinator-"), no_restart=False)
    result = run.result()
    assert result.workers_replaced == 0
    _assert_complete_and_identical(run.store, reference)


@pytest.mark.extended  # the chaos test (extended) finds this too, by chance
def test_a_hung_worker_the_restarted_coordinator_never_heard_from_is_replaced(ray_session, signal, reference, tmp_path):
    """The only worker hangs holding a lease, then the coordinator restarts and forgets that lease: the
    worker is replaced a lease timeout after the restart, or the run would wait forever."""
    import ray

    marker = tmp_path / "hung"
    options = {"delay_s": 0.02, "hang_once_path": str(marker)}
    settings = {**FAST, "workers": 1, "lease_timeout_s": 10.0}
    run = BackgroundRun(signal, str(tmp_path / "run"), **settings, engine_options=options)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline and run.thread.is_alive(), "no engine hung"
        time.sleep(0.05)  # polling interval of an observer, not a race fix
    ray.kill(_actor("sigray-coordinator-"), no_restart=False)  # well within the 10 s lease timeout
    result = run.result()
    assert result.workers_replaced == 1
    _assert_complete_and_identical(run.store, reference)


def test_a_hung_engine_is_caught_by_its_lease_timeout_and_replaced(ray_session, signal, reference, tmp_path):
    marker = str(tmp_path / "hung")
    options = {"delay_s": 0.02, "hang_once_path": marker}
    run = BackgroundRun(signal, str(tmp_path / "run"), **FAST, lease_timeout_s=10.0, engine_options=options)
    result = run.result()
    assert (tmp_path / "hung").exists(), "no engine hung"
    assert result.workers_replaced >= 1 and result.requeued >= 1
    _assert_complete_and_identical(run.store, reference)


def test_an_engine_that_cannot_load_stops_the_run_with_its_error_instead_of_looping(ray_session, cpu_signal, tmp_path):
    store = str(tmp_path / "run")
    with pytest.raises(sigray.SigrayError, match=r"workers keep failing \(\d+ lost with no progress in between\)"):
        sigray.run([cpu_signal], store, **{**FAST, "engine_options": {"fail_to_load": True}})
    status, _ = RunStore.open(store).read_state()
    assert (status == 0).all()  # nothing half-done; the store is ready for a rerun
    from sigray.lease import read_lease

    assert read_lease(store) is None, "the failed run gave its lease back"


def test_an_engine_that_hangs_while_loading_is_replaced_after_the_load_timeout(
    ray_session, signal, reference, tmp_path, caplog
):
    """A load that hangs (a stuck NCCL init, a frozen process) is timed from the worker's start, not from
    when it asked for a GPU, and the worker is replaced; the run completes unchanged. One worker: with two,
    the other could finish the run before the load timeout and nothing would need replacing."""
    options = {"load_s": 3600.0, "load_once_path": str(tmp_path / "hung-load")}
    settings = {**FAST, "workers": 1, "load_timeout_s": 2.0}
    run = BackgroundRun(signal, str(tmp_path / "run"), **settings, engine_options=options)
    result = run.result()
    assert (tmp_path / "hung-load").exists(), "no load hung"
    assert result.workers_replaced == 1
    assert "stopped answering (its engine did not load in 2 s)" in caplog.text
    _assert_complete_and_identical(run.store, reference)
