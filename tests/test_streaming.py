"""Each signal is post-processed as soon as its windows are saved, while the others still run
(issue 16.3): `sigray results` shows it during the run, and a crash loses none of it."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pandas as pd
import pytest

import sigray
from sigray.store import PENDING, RunStore
from tests.conftest import nab_signal
from tests.processes import kill_session, reap_orphans, start_cli, wait_until_no_writer

FIRST, SECOND = "cpu_utilization_asg_misconfiguration", "ambient_temperature_system_failure"  # 111 then 1,175 windows
SETTINGS = ["--engine", "test-double", "--batch-size", "8", "--flush-interval", "0.5"]


def _first_result_while_running(store: str, process) -> sigray.reader.Results:
    """Poll the store as a user would until it shows a result; the run must still be live then."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before any signal's result was seen"
        try:
            results = sigray.open(store).results()
        except sigray.StoreError:
            results = None  # not created yet
        if results is not None and results.anomalies:
            return results
        time.sleep(0.2)  # polling interval of an observer, not a race fix
    raise AssertionError("no signal's result appeared during the run")


def test_a_signal_is_post_processed_while_the_others_run_and_a_crash_keeps_it(ray_session, tmp_path, short_tmp):
    store = str(tmp_path / "run")
    signals = [nab_signal(FIRST), nab_signal(SECOND)]
    # 0.1 s per batch of 8: the second signal takes about 15 s after the first is done.
    command = ["run", *signals, "--store", store, *SETTINGS, "--engine-option", "delay_s=0.1"]
    ray_tmp = os.path.join(short_tmp, "streaming")
    run = start_cli(command, ray_tmp)
    try:
        during = _first_result_while_running(store, run)
        status, _ = RunStore.open(store, read_only=True).read_state()
    finally:
        kill_session(run)  # a crash, right after the first signal's result was saved
        reap_orphans(ray_tmp)
    assert list(during.anomalies) == [FIRST] and during.missing == [SECOND]
    assert during.running and "a run is live on this store" in during.warnings()[0]  # not "run it again"
    assert (status == PENDING).any()  # the second signal was still running when the first had its result

    wait_until_no_writer(store)
    rerun = sigray.run(signals, store, engine="test-double", batch_size=64)
    assert rerun.complete and rerun.reused_results == 1  # the first signal's result survived the crash
    reference = sigray.run(signals, str(tmp_path / "reference"), engine="test-double", batch_size=64)
    for name in (FIRST, SECOND):
        pd.testing.assert_frame_equal(rerun.anomalies[name], reference.anomalies[name])
    assert np.array_equal(during.anomalies[FIRST]["start"], reference.anomalies[FIRST]["start"])


def test_windows_are_answered_while_later_signals_are_windowed_and_a_coordinator_crash_loses_none(
    ray_session, tmp_path, monkeypatch
):
    """The run registers its first signals, starts the workers, and windows the rest (sigllm's
    preprocessing) between the supervisor's checks, adding them through the coordinator
    (issue 16.3). A coordinator killed between two additions is restarted by Ray and learns
    from the store which signals joined; every window is answered once, and the results are
    those of a run whose signals all joined before it began."""
    from sigray import feed

    names = [FIRST, "nyc_taxi", "machine_temperature_system_failure", SECOND]
    signals = [nab_signal(name) for name in names]
    reference = sigray.run(signals, str(tmp_path / "reference"), engine="test-double", batch_size=10**4)
    monkeypatch.setattr(feed, "REGISTER_WINDOWS", 150)  # a signal a step: nyc_taxi, machine_temperature, ambient
    seen = []
    step = feed.SignalFeed.step

    def observed_step(self):
        if not self.done:
            progress = ray_session.get(self.coordinator.progress.remote())
            seen.append((progress.done, progress.signals_to_add))
            if len(seen) == 2:
                ray_session.kill(self.coordinator, no_restart=False)  # Ray restarts it
            if len(self.prepared.unregistered) == 1:  # before the last signal joins, windows of the first are answered
                deadline = time.monotonic() + 120
                while ray_session.get(self.coordinator.progress.remote()).done == 0:
                    assert time.monotonic() < deadline, "no window answered while signals were still to join"
                    time.sleep(0.1)
                seen.append((ray_session.get(self.coordinator.progress.remote()).done, 1))
                while not sigray.open(store).status()["signals_to_add"]:  # as `sigray status` shows it
                    assert time.monotonic() < deadline, "the store never said signals are still to join"
                    time.sleep(0.1)
        step(self)

    store = str(tmp_path / "run")
    monkeypatch.setattr(feed.SignalFeed, "step", observed_step)
    result = sigray.run(signals, store, engine="test-double", batch_size=8, flush_interval_s=0.2)

    assert [to_add for _, to_add in seen[:2]] == [3, 2] and seen[-1][0] > 0  # answers came before the last joined
    assert result.complete and result.total_windows == reference.total_windows == result.computed_windows
    assert result.n_signals == 4 and result.signal_windows == reference.signal_windows
    opened = RunStore.open(store)
    assert [e.name for e in opened.signals] == names and opened.n_windows == reference.total_windows
    status, attempts = opened.read_state()
    assert (status != PENDING).all() and (attempts == 1).all()  # none asked twice (the test double's answers are valid)
    assert list(result.signals) == names and sigray.open(store).status()["signals_to_add"] == 0
    for name in names:
        pd.testing.assert_frame_equal(result.anomalies[name], reference.anomalies[name])


def test_a_signal_sigllm_fails_to_window_mid_run_is_named_and_the_answers_before_it_are_kept(
    ray_session, tmp_path, monkeypatch
):
    """Checks refuse bad signals before anything starts; a failure they do not foresee comes
    when the signal is windowed, while the first signals' windows run (issue 16.3)."""
    from sigray import feed
    from sigray.errors import InputError, SigrayError
    from sigray.pipelines.sigllm_pipeline import SigllmPipeline

    windowing = SigllmPipeline.plan

    def fails_on_taxi(self, signal, normal=None):  # a test double of a sigllm failure no check foresees
        if signal.name == "nyc_taxi":
            raise InputError("sigllm could not window signal 'nyc_taxi'.")
        return windowing(self, signal, normal)

    step = feed.SignalFeed.step

    def after_some_answers(self):
        deadline = time.monotonic() + 120
        while ray_session.get(self.coordinator.progress.remote()).done == 0:
            assert time.monotonic() < deadline, "no window answered"
            time.sleep(0.1)
        step(self)

    monkeypatch.setattr(SigllmPipeline, "plan", fails_on_taxi)
    monkeypatch.setattr(feed.SignalFeed, "step", after_some_answers)
    store = str(tmp_path / "run")
    with pytest.raises(SigrayError, match=r"'nyc_taxi'. \(The windows answered so far are saved.\)"):
        # No flush during the run: what is saved, the end of the run saved (issue: "never destroys work").
        settings = {"batch_size": 8, "flush_interval_s": 600, "store_lease_s": 1200}
        sigray.run([nab_signal(FIRST), nab_signal("nyc_taxi")], store, engine="test-double", **settings)
    saved = int(np.count_nonzero(RunStore.open(store).read_status() != PENDING))
    monkeypatch.undo()
    rerun = sigray.run([nab_signal(FIRST)], store, engine="test-double", batch_size=8)
    assert saved > 0 and rerun.complete and rerun.resumed_windows == saved  # none of them asked again
    assert rerun.computed_windows == rerun.total_windows - saved


def test_sigllms_own_error_while_windowing_names_the_signal(monkeypatch):
    from sigray.errors import WindowingError
    from sigray.pipelines.sigllm_pipeline import SigllmPipeline
    from sigray.signals import load_signal

    class FailingMLPipeline:  # a test double of an MLBlocks pipeline sigllm fails in
        def fit(self, **inputs):
            raise ValueError("cannot reshape array")

    pipeline = SigllmPipeline("mistral_detector", {})
    monkeypatch.setattr(pipeline, "_build", FailingMLPipeline)
    failure = r"sigllm could not window signal 'x' \(ValueError: cannot reshape"
    with pytest.raises(WindowingError, match=failure) as info:
        pipeline.plan(load_signal(nab_signal(FIRST), name="x"))
    assert info.value.signal == "x"


def test_post_processing_in_ray_tasks_equals_the_drivers(ray_session, tmp_path, monkeypatch):
    """With CPUs to spare, the signals left at a run's end go to Ray tasks; the driver only saves."""
    from sigray import postprocess

    signals = [nab_signal(name) for name in (FIRST, "nyc_taxi", "machine_temperature_system_failure")]
    in_driver = []
    driver_detect = postprocess.detect
    monkeypatch.setattr(postprocess, "detect", lambda *args: in_driver.append(1) or driver_detect(*args))
    monkeypatch.setattr(postprocess.Detections, "during_run", lambda self: None)  # everything left to the end

    monkeypatch.setenv("SIGRAY_TASKS", "always")  # on any machine (auto: 8 signals and 4 CPUs spare)
    tasks = sigray.run(signals, str(tmp_path / "tasks"), engine="test-double", batch_size=64)
    assert in_driver == []
    monkeypatch.setenv("SIGRAY_TASKS", "never")
    driver = sigray.run(signals, str(tmp_path / "driver"), engine="test-double", batch_size=64)
    assert len(in_driver) == len(signals)

    assert list(tasks.signals) == list(driver.signals)  # in the run's order, whichever task ended first
    for name, result in tasks.signals.items():
        pd.testing.assert_frame_equal(result.anomalies, driver.signals[name].anomalies)
        assert np.array_equal(result.forecast, driver.signals[name].forecast, equal_nan=True)
    reopened = sigray.open(str(tmp_path / "tasks")).results()
    assert reopened.complete and set(reopened.anomalies) == set(tasks.signals)


def test_windowing_and_post_processing_in_ray_tasks_find_what_the_driver_finds(ray_session, tmp_path, monkeypatch):
    """With CPUs to spare, Ray tasks window the signals that join a run (their prompts go from
    the tasks to the coordinator, not through the driver) and post-process them during the
    run; the driver windows only the first signals, registered before Ray starts (issue 16.2)."""
    from sigray import postprocess
    from sigray.plan import RunPlan

    names = [FIRST, "nyc_taxi", "machine_temperature_system_failure", SECOND]
    signals = [nab_signal(name) for name in names]
    windowed_here, detected_here = [], []
    window, detect = RunPlan.new_signal, postprocess.detect
    monkeypatch.setattr(RunPlan, "new_signal", staticmethod(lambda p: windowed_here.append(p.name) or window(p)))
    monkeypatch.setattr(postprocess, "detect", lambda *args: detected_here.append(1) or detect(*args))

    monkeypatch.setenv("SIGRAY_TASKS", "always")  # auto: 8 signals and 4 CPUs beside the workers
    store = str(tmp_path / "tasks")
    in_tasks = sigray.run(signals, store, engine="test-double", batch_size=8, flush_interval_s=0.2)
    assert windowed_here == [FIRST] and detected_here == []  # 111 windows: more than the first 2 batches of 8
    monkeypatch.setenv("SIGRAY_TASKS", "never")
    in_driver = sigray.run(signals, str(tmp_path / "driver"), engine="test-double", batch_size=8)
    assert windowed_here == [FIRST, *names] and len(detected_here) == len(names)

    assert in_tasks.complete and in_tasks.computed_windows == in_tasks.total_windows == in_driver.total_windows
    opened = RunStore.open(store)
    assert [e.name for e in opened.signals] == names  # joined in the run's order, whichever task ended first
    status, attempts = opened.read_state()
    assert (status != PENDING).all() and (attempts == 1).all()
    assert list(in_tasks.signals) == names
    for name in names:
        pd.testing.assert_frame_equal(in_tasks.anomalies[name], in_driver.anomalies[name])
        assert np.array_equal(in_tasks.signals[name].forecast, in_driver.signals[name].forecast, equal_nan=True)


def test_a_run_stopped_while_tasks_window_and_post_process_resumes_with_no_window_asked_twice(
    ray_session, tmp_path, monkeypatch
):
    """A stop (here the deadline) ends the run between the tasks' results: those still running
    are cancelled, what joined and what was answered is saved, and the rerun asks the rest once."""
    names = [FIRST, "nyc_taxi", "machine_temperature_system_failure", SECOND]
    signals = [nab_signal(name) for name in names]
    monkeypatch.setenv("SIGRAY_TASKS", "always")
    store, slow = str(tmp_path / "run"), {"delay_s": 0.05}  # 0.05 s a batch of 8: about 20 s of windows
    stopped = sigray.run(signals, store, engine="test-double", batch_size=8, deadline_s=4, engine_options=slow)
    assert stopped.stopped and not stopped.complete
    assert stopped.missing == [name for name in names if name not in stopped.signals] != []  # every one left
    rerun = sigray.run(signals, store, engine="test-double", batch_size=8)
    assert rerun.complete and list(rerun.signals) == names
    status, attempts = RunStore.open(store).read_state()
    assert (status != PENDING).all() and (attempts == 1).all()  # none asked twice
    monkeypatch.setenv("SIGRAY_TASKS", "never")
    reference = sigray.run(signals, str(tmp_path / "reference"), engine="test-double", batch_size=10**4)
    for name in names:
        pd.testing.assert_frame_equal(rerun.anomalies[name], reference.anomalies[name])


def test_tasks_are_not_asked_for_when_the_workers_hold_every_cpu(ray_session, tmp_path, monkeypatch):
    """``SIGRAY_TASKS=always`` with no CPU beside the workers windows in the driver: a task
    would wait for a CPU forever, and the run with it."""
    from sigray.plan import RunPlan

    names = [FIRST, "nyc_taxi", "machine_temperature_system_failure"]
    windowed_here, window = [], RunPlan.new_signal
    monkeypatch.setattr(RunPlan, "new_signal", staticmethod(lambda p: windowed_here.append(p.name) or window(p)))
    monkeypatch.setenv("SIGRAY_TASKS", "always")
    cpus = int(ray_session.available_resources()["CPU"])
    settings = {"engine": "test-double", "batch_size": 8, "workers": cpus}
    result = sigray.run([nab_signal(name) for name in names], str(tmp_path / "run"), **settings)
    assert result.complete and windowed_here == names


def test_a_windowing_task_that_fails_is_named_and_keeps_the_answers(ray_session):
    """What a windowing task raises reaches the driver through the coordinator call it feeds
    (Ray fails the call, which never runs): a signal sigllm cannot window is named, a task's
    lost process said so; both say the answers are kept (the run flushes before it ends)."""
    from sigray.errors import InputError, SigrayError
    from sigray.feed import add_signals

    @ray_session.remote
    class CoordinatorTestDouble:
        def add_signals(self, new):
            raise AssertionError("called with a batch no task made")

    @ray_session.remote(max_retries=0)
    def refuses():
        raise InputError("signal 'flat': sigllm made no window of it.")

    @ray_session.remote(max_retries=0)
    def dies():
        os._exit(1)

    coordinator = CoordinatorTestDouble.remote()
    with pytest.raises(SigrayError, match=r"^signal 'flat': sigllm made no window of it. \(The windows answered"):
        add_signals(coordinator, refuses.remote())
    with pytest.raises(SigrayError, match=r"windowing signals failed in a Ray task: .*answered so far are saved"):
        add_signals(coordinator, dies.remote())


def test_tasks_are_used_with_cpus_to_spare_beside_the_workers(ray_session, monkeypatch):
    from sigray import tasks
    from sigray.errors import ConfigError

    free = ray_session.available_resources()["CPU"]  # 4: the test session's
    assert tasks.use_tasks(tasks.TASKS_FROM, busy_cpus=free - tasks.TASKS_FREE_CPUS)
    assert not tasks.use_tasks(tasks.TASKS_FROM, busy_cpus=free - tasks.TASKS_FREE_CPUS + 1)
    assert not tasks.use_tasks(tasks.TASKS_FROM - 1)  # a task's first use imports sigllm: seconds
    monkeypatch.setenv("SIGRAY_TASKS", "always")
    assert tasks.use_tasks(1, busy_cpus=free - 1) and not tasks.use_tasks(0)
    assert not tasks.use_tasks(100, busy_cpus=free)  # no CPU beside the workers: a task would wait forever
    monkeypatch.setenv("SIGRAY_TASKS", "never")
    assert not tasks.use_tasks(100)
    monkeypatch.setenv("SIGRAY_TASKS", "sometimes")
    with pytest.raises(ConfigError, match="SIGRAY_TASKS='sometimes': expected one of auto, always, never"):
        tasks.use_tasks(100)


def test_a_run_past_its_plan_memory_keeps_no_dropped_signal_in_memory_and_finds_the_same(
    ray_session, tmp_path, monkeypatch
):
    """Planning reads and checks; sigllm windows a signal where it is first used (registered).
    Past ``PLAN_MEMORY_MB`` a signal's preprocessing (prompts, windows, context) is dropped
    after that and made again where it is used next (post-processed), and registration goes
    in batches; the results are those of a run that kept everything (issue 16.2)."""
    from sigray import api, feed, prepare
    from sigray.plan import make_plan

    signals = [nab_signal(name) for name in (FIRST, "nyc_taxi", "machine_temperature_system_failure")]
    kept_all = sigray.run(signals, str(tmp_path / "kept"), engine="test-double", batch_size=64, progress=False)
    monkeypatch.setenv("SIGRAY_PLAN_MEMORY_MB", "1")  # more than the first signal's, less than nyc_taxi's
    batches = []
    made = prepare.registration_batches

    def recorded(*args, **kwargs):
        for batch in made(*args, **kwargs):
            batches.append(len(batch))
            yield batch

    monkeypatch.setattr(prepare, "registration_batches", recorded)
    monkeypatch.setattr(feed, "registration_batches", recorded)
    # Batches of 10,000 windows: the first registration would hold every signal but for the budget.
    plan = make_plan(api.run_config(str(tmp_path / "bounded"), {"engine": "test-double", "batch_size": 10**4}), signals)
    assert not any(p.is_preprocessed for p in plan.plans)
    assert all(p.kept and p.holds_data for p in plan.plans)  # the data alone fits in 1 MB
    bounded = api.run_plan(plan)
    assert bounded.complete and bounded.total_windows == kept_all.total_windows
    assert not plan.plans[1].kept  # nyc_taxi's 700-odd windows are past 1 MB
    assert len(batches) > 1  # registered in batches of about the budget, not all at once
    assert not any(p.is_preprocessed or p.holds_data for p in plan.plans if not p.kept)  # dropped after each use
    for name, result in kept_all.signals.items():
        pd.testing.assert_frame_equal(bounded.signals[name].anomalies, result.anomalies)
        assert np.array_equal(bounded.signals[name].forecast, result.forecast, equal_nan=True)


def test_a_signal_given_in_memory_stays_and_a_file_changed_after_planning_is_named(tmp_path, monkeypatch):
    from sigray.errors import InputError
    from sigray.plan import make_plan

    monkeypatch.setenv("SIGRAY_PLAN_MEMORY_MB", "0")
    path = tmp_path / "cpu.csv"
    shutil.copy(nab_signal(FIRST), path)
    frame = pd.read_csv(nab_signal("nyc_taxi"))
    plan = make_plan(sigray.api.run_config("unused", {"engine": "test-double"}), [str(path), ("taxi", frame)])
    from_file, in_memory = plan.plans
    assert not from_file.holds_data and in_memory.holds_data  # data given in memory cannot be read again
    assert from_file.n_windows > 0 and from_file.holds_data  # read again for its windows
    from_file.done_with()
    changed = pd.read_csv(path)
    changed.loc[0, "value"] += 1.0
    changed.to_csv(path, index=False)
    with pytest.raises(InputError, match="signal 'cpu': its file changed while the run ran"):
        from_file.signal  # noqa: B018


def test_a_signal_whose_file_went_or_changed_after_it_joined_is_post_processed_from_the_store(
    ray_session, tmp_path, monkeypatch
):
    """Past the memory budget a signal's data is dropped once registered; post-processing then
    reads the store's copy, what its windows were asked of, not its file (gone or changed)."""
    from sigray import postprocess

    files = {"cpu": tmp_path / "cpu.csv", "taxi": tmp_path / "taxi.csv"}
    for path, source in zip(files.values(), (FIRST, "nyc_taxi")):
        shutil.copy(nab_signal(source), path)
    reference = sigray.run(
        [(name, pd.read_csv(path)) for name, path in files.items()], str(tmp_path / "ref"), engine="test-double"
    )
    finish = postprocess.Detections.finish

    def after_the_files_changed(self, stop):
        os.remove(files["cpu"])
        changed = pd.read_csv(files["taxi"])
        changed["value"] *= 2
        changed.to_csv(files["taxi"], index=False)
        finish(self, stop)

    monkeypatch.setenv("SIGRAY_PLAN_MEMORY_MB", "0")  # nothing kept: each use reads the data again
    monkeypatch.setattr(postprocess.Detections, "during_run", lambda self: None)  # everything left to the end
    monkeypatch.setattr(postprocess.Detections, "finish", after_the_files_changed)
    result = sigray.run([str(path) for path in files.values()], str(tmp_path / "run"), engine="test-double")
    assert result.complete and list(result.signals) == list(files)
    for name in files:
        pd.testing.assert_frame_equal(result.anomalies[name], reference.anomalies[name])
        assert np.array_equal(result.signals[name].forecast, reference.signals[name].forecast, equal_nan=True)


@pytest.mark.parametrize("tasks", ["never", "always"])
def test_a_signal_file_gone_before_it_is_windowed_stops_the_run_naming_it(ray_session, tmp_path, monkeypatch, tasks):
    """Past the memory budget a signal's file is read again where it is windowed; gone by then,
    the run stops naming it (exit 1: the answers so far are saved) and a rerun without it goes on."""
    from sigray import feed
    from sigray.errors import SignalStoppedRun

    names = [FIRST, "nyc_taxi", "machine_temperature_system_failure"]
    paths = {name: tmp_path / f"{name}.csv" for name in names}
    for name, path in paths.items():
        shutil.copy(nab_signal(name), path)
    step = feed.SignalFeed.step

    def deleting_first(self):
        if paths["nyc_taxi"].exists():
            paths["nyc_taxi"].unlink()
        return step(self)

    monkeypatch.setenv("SIGRAY_PLAN_MEMORY_MB", "0")  # nothing kept: read again where used
    monkeypatch.setenv("SIGRAY_TASKS", tasks)
    monkeypatch.setattr(feed.SignalFeed, "step", deleting_first)
    store = str(tmp_path / "run")
    with pytest.raises(SignalStoppedRun, match=r"signal 'nyc_taxi'.*no such file. \(The windows answered") as info:
        sigray.run([str(path) for path in paths.values()], store, engine="test-double", batch_size=8)
    assert info.value.signal == "nyc_taxi"
    monkeypatch.undo()
    rest = [str(paths[FIRST]), str(paths["machine_temperature_system_failure"])]
    assert sigray.run(rest, store, engine="test-double", batch_size=8).complete


@pytest.mark.parametrize("value", ["abc", "-5", "inf", "nan"])
def test_a_plan_memory_that_is_no_size_is_refused_naming_the_variable(monkeypatch, value):
    from sigray.errors import ConfigError
    from sigray.plan import make_plan

    monkeypatch.setenv("SIGRAY_PLAN_MEMORY_MB", value)
    with pytest.raises(ConfigError, match=f"SIGRAY_PLAN_MEMORY_MB='{value}': expected megabytes, 0 or more"):
        make_plan(sigray.api.run_config("unused", {"engine": "test-double"}), [nab_signal(FIRST)])


def test_the_window_table_index_finds_each_key_its_row_and_nothing_else():
    """Registering signals looks their windows up in the store's table by key (sorted arrays, not a
    dict of a million Python objects); keys sharing their first 8 bytes are told apart."""
    from sigray.store.layout import KeyIndex

    rng = np.random.default_rng(0)
    table = rng.integers(0, 2**63, size=(1000, 2), dtype=np.int64).astype("<u8")
    table[10:20, 0] = table[9, 0]  # the same high half: ordered by the low one
    absent = table[:50].copy()
    absent[:, 1] += np.uint64(1)
    index = KeyIndex(table[:600])
    asked = np.concatenate([table[500:700], absent, table[[3, 3, 15]]])
    rows = index.rows(asked)
    assert rows[:100].tolist() == list(range(500, 600)) and (rows[100:200] == -1).all()
    assert (rows[200:250] == -1).all() and rows[250:].tolist() == [3, 3, 15]
    assert (KeyIndex(table[:0]).rows(asked) == -1).all()
    grown = KeyIndex(table[:0])
    for start, stop in ((0, 1), (1, 400), (400, 600)):  # a table registered in batches keeps one index
        grown.add(table[start:stop])
    assert np.array_equal(grown.rows(asked), rows) and len(grown) == 600


def test_registering_in_batches_reads_the_tables_keys_once(tmp_path, monkeypatch):
    """The writer keeps the window table's key index between registrations (a run of a million
    windows registers in over a hundred batches); rows are those of one registration."""
    from sigray.store import run_store
    from tests.test_coordinator import _signal

    def make(path):
        return RunStore.create(path, {"x": 1}, "fp", config={}, n_samples=1, horizon=1, chunk_windows=4)

    batches = [[_signal("a", range(6))], [_signal("b", range(4, 9))], [_signal("c", range(2, 12))]]
    built = []
    index = run_store.KeyIndex
    monkeypatch.setattr(run_store, "KeyIndex", lambda keys: built.append(len(keys)) or index(keys))
    store = make(str(tmp_path / "batches"))
    for batch in batches:
        store.add_signals(batch)
    assert built == [0]  # once, when the table was empty
    at_once = make(str(tmp_path / "at-once"))
    at_once.add_signals([s for batch in batches for s in batch])
    assert store.n_windows == at_once.n_windows == 12
    for entry in at_once.signals:
        assert np.array_equal(store.signal_rows(store.signal(entry.name)), at_once.signal_rows(entry))
    assert np.array_equal(store._read("windows/key"), at_once._read("windows/key"))


def test_a_stopped_runs_last_line_counts_the_signals_not_windowed_yet():
    """A stop can come before every signal was windowed: their windows are not in the total."""
    from sigray.cli import _resumable_line
    from sigray.runner import RunResult

    stopped = RunResult(store="s", total_windows=138, computed_windows=24, n_signals=1, unregistered=["b", "c"])
    assert _resumable_line(stopped) == (
        "resumable: 24 of 138 windows done (and 2 more signal(s) not windowed yet); run the same command to resume."
    )


def test_a_bad_sigray_tasks_is_refused_before_anything_starts(tmp_path, monkeypatch, capsys, ray_must_not_start):
    from sigray.cli import main as cli

    monkeypatch.setenv("SIGRAY_TASKS", "sometimes")
    store = str(tmp_path / "run")
    assert cli(["run", nab_signal(FIRST), "--store", store, "--engine", "test-double"]) == 2
    assert "sigray: error: SIGRAY_TASKS='sometimes': expected one of auto, always, never" in capsys.readouterr().err
    assert not os.path.exists(store)
