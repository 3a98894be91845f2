"""An answer once generated is never paid for again: not when post-processing changes, not when
signals are added, duplicated or extended. Windows are counted through the test double's
generate log (one line per prompt it answered), on real Ray and a real Zarr store."""

from __future__ import annotations

import collections
import os
import shutil

import pandas as pd
import pytest

import sigray
from sigray.engines.test_double import _digest
from sigray.store import DONE, RunStore
from tests.conftest import nab_signal

FAST = {"engine": "test-double", "flush_interval_s": 0.3, "batch_size": 32, "chunk_windows": 64}
CPU = "cpu_utilization_asg_misconfiguration"
FIND = "orion.primitives.timeseries_anomalies.find_anomalies#1"


def _run(signals, store, log=None, **settings):
    options = {"log_path": log} if log else {}
    return sigray.run(signals, store, **{**FAST, **settings}, engine_options=options)


def _generated(log: str) -> collections.Counter:
    """Prompt digest -> times the engine answered it."""
    if not os.path.exists(log):
        return collections.Counter()
    with open(log) as f:
        return collections.Counter(line.split()[0] for line in f)


def test_a_new_detection_setting_generates_nothing_and_equals_a_fresh_run(ray_session, tmp_path):
    store, log, signal = str(tmp_path / "run"), str(tmp_path / "log"), nab_signal(CPU)
    first = _run([signal], store, log)
    generated = _generated(log)
    params = {FIND: {"window_size_portion": 0.5, "anomaly_padding": 20}}
    tuned = _run([signal], store, log, pipeline_params=params)
    assert _generated(log) == generated, "no window was generated again"
    assert tuned.computed_windows == 0 and tuned.resumed_windows == first.total_windows
    assert ("find_anomalies#1.window_size_portion", 0.3, 0.5) in tuned.detection_changes
    fresh = _run([signal], str(tmp_path / "fresh"), pipeline_params=params)
    pd.testing.assert_frame_equal(tuned.anomalies[CPU], fresh.anomalies[CPU])
    # Both result sets stay; the newest is what readers show by default, any can be chosen.
    reader = sigray.open(store)
    assert [s.name for s in reader.result_sets()] == ["defaults", tuned.result_set.name]
    pd.testing.assert_frame_equal(reader.results().anomalies[CPU], fresh.anomalies[CPU], check_dtype=False)
    pd.testing.assert_frame_equal(reader.results("defaults").anomalies[CPU], first.anomalies[CPU], check_dtype=False)
    # Back to the first setting: nothing generated, nothing post-processed, the first result.
    back = _run([signal], store, log)
    assert back.reused_results == 1 and back.result_set.id == first.result_set.id
    pd.testing.assert_frame_equal(back.anomalies[CPU], first.anomalies[CPU])


def test_a_pipeline_dict_edited_after_the_llm_step_names_its_edit(ray_session, tmp_path):
    """A pipeline given as a dict (or JSON file) names a new result set by what changed since the
    store was made, as ``--param`` does: two sets are not both "defaults"."""
    import copy

    from sigray.pipelines.sigllm_pipeline import load_pipeline_spec

    store, signal = str(tmp_path / "run"), nab_signal(CPU)
    spec = load_pipeline_spec("mistral_detector")
    first = _run([signal], store, pipeline=spec)
    edited = copy.deepcopy(spec)
    edited["init_params"][FIND]["window_size_portion"] = 0.5
    tuned = _run([signal], store, pipeline=edited)
    assert tuned.computed_windows == 0 and first.result_set.name == "defaults"
    assert tuned.result_set.name == "find_anomalies#1.window_size_portion=0.5"
    assert [s.name for s in sigray.open(store).result_sets()] == ["defaults", tuned.result_set.name]


def test_a_detection_setting_sigllm_fails_on_is_named_and_the_answers_stay(ray_session, tmp_path):
    """sigllm's own error in post-processing (here numpy has no ``nope``) is one line naming the
    signal and the way on, in the driver and in a Ray task; no set is left half made."""
    store, signal = str(tmp_path / "run"), nab_signal(CPU)
    first = _run([signal], store)
    params = {"sigllm.primitives.postprocessing.aggregate_rolling_window#1": {"agg": "nope"}}
    failure = rf"post-processing signal '{CPU}' failed in sigllm/Orion \(AttributeError: .*'nope'\); its answers"
    with pytest.raises(sigray.SigrayError, match=failure):
        sigray.detect(store, pipeline_params=params)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIGRAY_TASKS", "always")
        with pytest.raises(sigray.SigrayError, match=failure):
            _run([signal], store, pipeline_params=params)  # nothing to compute: Ray is up (the test's), tasks go
    reader = sigray.open(store)
    assert [s.name for s in reader.result_sets()] == ["defaults"]
    pd.testing.assert_frame_equal(reader.results().anomalies[CPU], first.anomalies[CPU], check_dtype=False)


def test_the_units_fix_and_the_prompters_voting_are_detection_settings(ray_session, tmp_path):
    store, log = str(tmp_path / "run"), str(tmp_path / "log")
    signal = nab_signal(CPU)
    _run([signal], store, log)
    fixed = _run([signal], store, log, fix_error_units=True)
    assert fixed.computed_windows == 0 and ("fix_error_units", False, True) in fixed.detection_changes
    prompter, plog, taxi = str(tmp_path / "prompter"), str(tmp_path / "plog"), nab_signal("nyc_taxi")
    _run([taxi], prompter, plog, pipeline="mistral_prompter")
    vote = {"sigllm.primitives.prompting.anomalies.find_anomalies_in_windows#1": {"alpha": 0.9}}
    voted = _run([taxi], prompter, plog, pipeline="mistral_prompter", pipeline_params=vote)
    assert voted.computed_windows == 0 and voted.detection_changes


def test_an_added_signal_generates_only_its_own_windows(ray_session, tmp_path):
    store, log = str(tmp_path / "run"), str(tmp_path / "log")
    first, second = nab_signal("art_load_balancer_spikes"), nab_signal(CPU)
    hourly = {"mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1": {"interval": 3600}}
    _run([first], store, log, pipeline_params=hourly)
    before = _generated(log)
    grown = _run([first, second], store, log, pipeline_params=hourly)
    added = _generated(log) - before
    requests = RunStore.open(store).read_prompts()
    rows = RunStore.open(store).signal_rows(RunStore.open(store).signal(CPU))
    assert set(added) == {_digest(requests[r]) for r in rows}
    assert grown.computed_windows == len(set(rows.tolist())) and grown.resumed_windows == len(before)
    # Fewer signals than the store holds: results for those, nothing deleted.
    fewer = _run([first], store, log, pipeline_params=hourly)
    assert fewer.computed_windows == 0 and list(fewer.signals) == ["art_load_balancer_spikes"]
    assert [s.name for s in RunStore.open(store).signals] == ["art_load_balancer_spikes", CPU]


def test_a_signal_under_another_name_generates_nothing(ray_session, tmp_path):
    store, log, signal = str(tmp_path / "run"), str(tmp_path / "log"), nab_signal(CPU)
    first = _run([signal], store, log)
    twin = tmp_path / "twin"
    twin.mkdir()
    shutil.copy(signal, twin / "copy.csv")
    again = _run([signal, ("copy", str(twin / "copy.csv"))], store, log)
    assert again.computed_windows == 0 and again.signal_windows == 2 * again.total_windows
    pd.testing.assert_frame_equal(again.anomalies["copy"], first.anomalies[CPU])
    assert max(_generated(log).values()) == 1


@pytest.mark.parametrize(
    ("name", "reused"),
    [
        ("machine_temperature_system_failure", True),  # its aggregated minimum is in the first 90%
        (CPU, False),  # a new minimum in the new rows: sigllm's Float2Scalar shifts every prompt
    ],
)
def test_an_extended_signal_generates_only_its_new_windows_and_equals_a_fresh_run(
    ray_session, tmp_path, caplog, name, reused
):
    store, log = str(tmp_path / "run"), str(tmp_path / "log")
    whole = pd.read_csv(nab_signal(name))
    shorter = whole.iloc[: int(len(whole) / 1.1)]
    _run([(name, shorter)], store, log)
    before = _generated(log)
    extended = _run([(name, whole)], store, log)
    assert f"signal '{name}': extended from {len(shorter)} to {len(whole)} points" in caplog.text  # said, not silent
    store_now = RunStore.open(store)
    keys_used = {_digest(store_now.read_prompts()[r]) for r in store_now.signal_rows(store_now.signal(name))}
    added = _generated(log) - before
    assert set(added) == keys_used - set(before), "only windows with new keys are generated"
    assert (extended.resumed_windows > 0) == reused and extended.computed_windows > 0
    if reused:  # answers kept from the shorter signal give what a fresh run would
        fresh = _run([(name, whole)], str(tmp_path / "fresh"))
        pd.testing.assert_frame_equal(extended.anomalies[name], fresh.anomalies[name])


def test_other_data_under_a_name_the_store_knows_is_said_not_silently_taken(ray_session, tmp_path, caplog):
    name = "cpu_utilization_asg_misconfiguration"
    data = pd.read_csv(nab_signal(name))
    _run([(name, data)], str(tmp_path / "run"))
    _run([(name, data.assign(value=data["value"] * 2))], str(tmp_path / "run"))
    assert f"signal '{name}': its data changed ({len(data)} points held, {len(data)} given)" in caplog.text
    assert "give it another name" in caplog.text


def test_a_signals_answers_do_not_depend_on_the_signals_beside_it(ray_session, tmp_path):
    """Seeds follow a window's content: a prompter signal alone and in company samples alike."""
    a, b = nab_signal("nyc_taxi"), nab_signal("ambient_temperature_system_failure")
    alone = _run([a], str(tmp_path / "alone"), pipeline="mistral_prompter")
    together = _run([b, a], str(tmp_path / "together"), pipeline="mistral_prompter")
    name = "nyc_taxi"
    pd.testing.assert_frame_equal(alone.anomalies[name], together.anomalies[name])
    one, two = RunStore.open(str(tmp_path / "alone")), RunStore.open(str(tmp_path / "together"))
    rows_one, rows_two = one.signal_rows(one.signal(name)), two.signal_rows(two.signal(name))
    assert (one.read_answers()[rows_one] == two.read_answers()[rows_two]).all()


def test_a_run_with_nothing_to_compute_starts_no_ray(tmp_path, ray_must_not_start):
    """Everything answered: post-processing only, in this process, with no cluster."""
    store = str(tmp_path / "run")
    shutil.copytree(os.path.join(os.path.dirname(__file__), "data", "format1", "finished"), store)
    signal = os.path.join(os.path.dirname(__file__), "data", "format1", "art_load_balancer_spikes.csv")
    hourly = {"mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1": {"interval": 3600}}
    result = sigray.run(
        [signal],
        store,
        engine="test-double",
        engine_options={"garbage_rate": 0.05},
        max_attempts=2,
        flush_interval_s=0.3,
        batch_size=8,
        chunk_windows=64,
        pipeline_params=hourly,
    )
    assert result.computed_windows == 0 and result.complete
    status, _ = RunStore.open(store).read_state()
    assert (status == DONE).all()


def test_signals_whose_windows_are_all_answered_under_other_names_start_no_ray(tmp_path, ray_must_not_start):
    """A run registers its first signals before Ray starts and the rest as windows run; when the
    first ask nothing, it registers more first, and starts Ray only if some window is new."""
    store = str(tmp_path / "run")
    shutil.copytree(os.path.join(os.path.dirname(__file__), "data", "format1", "finished"), store)
    signal = os.path.join(os.path.dirname(__file__), "data", "format1", "art_load_balancer_spikes.csv")
    hourly = {"mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1": {"interval": 3600}}
    settings = {"max_attempts": 2, "batch_size": 1, "chunk_windows": 64, "pipeline_params": hourly}
    sigray.run([signal], store, engine="test-double", engine_options={"garbage_rate": 0.05}, **settings)  # migrated
    copies = [(f"copy{k}", signal) for k in range(3)]  # the same data under new names: nothing to ask
    result = sigray.run(copies, store, engine="test-double", engine_options={"garbage_rate": 0.05}, **settings)
    assert result.complete and result.computed_windows == 0 and list(result.signals) == ["copy0", "copy1", "copy2"]
    assert [e.name for e in RunStore.open(store).signals] == ["art_load_balancer_spikes", "copy0", "copy1", "copy2"]


def test_a_resumed_run_preprocesses_only_the_signals_it_post_processes(tmp_path, monkeypatch, ray_must_not_start):
    """sigllm's preprocessing (most of a resumed run's time at hundreds of signals) runs again only
    for a signal whose post-processing runs again: not for the same command, once for a new setting."""
    from sigray.pipelines.sigllm_pipeline import SigllmPipeline

    store = str(tmp_path / "run")
    shutil.copytree(os.path.join(os.path.dirname(__file__), "data", "format1", "finished"), store)
    name = "art_load_balancer_spikes"
    signal = os.path.join(os.path.dirname(__file__), "data", "format1", f"{name}.csv")
    hourly = {"mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1": {"interval": 3600}}
    settings = {"engine_options": {"garbage_rate": 0.05}, "max_attempts": 2, "batch_size": 8, "chunk_windows": 64}
    first = sigray.run([signal], store, engine="test-double", pipeline_params=hourly, **settings)
    preprocessed = []
    plan = SigllmPipeline.plan
    monkeypatch.setattr(SigllmPipeline, "plan", lambda self, *a: preprocessed.append(a[0].name) or plan(self, *a))
    again = sigray.run([signal], store, engine="test-double", pipeline_params=hourly, **settings)
    assert preprocessed == [] and again.reused_results == 1 and again.complete
    pd.testing.assert_frame_equal(again.anomalies[name], first.anomalies[name])
    tuned = {**hourly, FIND: {"window_size_portion": 0.5}}
    changed = sigray.run([signal], store, engine="test-double", pipeline_params=tuned, **settings)
    assert preprocessed == [name] and changed.reused_results == 0 and changed.complete
    assert changed.computed_windows == 0


def _saved_in_new_sets(store: str, old: str) -> int:
    """Signal results saved whole in any result set but ``old`` (its metadata may not be there yet)."""
    from sigray.store import result_sets

    live = RunStore.open(store)
    try:
        sets = [sid for sid, _ in live.group["results"].groups() if sid != old]
    except KeyError:
        return 0
    return sum(result_sets.has_result(live.group, sid, s) for sid in sets for s in live.signals)


@pytest.mark.extended
def test_post_processing_killed_or_stopped_keeps_earlier_sets_and_finished_signals(ray_session, tmp_path):
    """`sigray detect` (Orion's threshold search: about a second a signal) on 20 signals: SIGKILLed after a
    result, then SIGTERMed after another (a graceful stop between signals, exit 75), then finished.
    Earlier result sets stay intact, no saved result is computed again, and the lease is kept the whole
    time (another writer is refused although post-processing outlasts the lease's time to live).

    The time to live is 6 s, several renewal periods: the lease is renewed by a process of its own
    (``sigray.lease_keeper``), so whatever sigllm and Orion do with the driver's interpreter, it holds."""
    import signal as signals
    import subprocess
    import sys
    import time

    from sigray import lease
    from tests.processes import kill_session

    store, signal, ttl_s = str(tmp_path / "run"), nab_signal(CPU), 6
    names = [CPU, *(f"copy{k}" for k in range(1, 20))]  # the same data: one signal's windows, 20 results
    first = _run([signal, *((name, signal) for name in names[1:])], store, store_lease_s=ttl_s)
    before = sigray.open(store).results().table()
    command = [sys.executable, "-m", "sigray.cli", "detect", store, "--param", f"{FIND}.fixed_threshold=false"]

    def detect_until(saved: int, stop) -> tuple[subprocess.Popen, int]:
        """Start the detect; once it holds the lease past its time to live and more than ``saved``
        results are in, check an intruder is refused, then ``stop`` it; the results saved then."""
        process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline, held_since = time.monotonic() + 240, None
        while process.poll() is None and time.monotonic() < deadline:
            holder = lease.read_lease(store)
            if held_since is None and holder is not None and holder.pid == process.pid:
                held_since = time.monotonic()
            held_long = held_since is not None and time.monotonic() - held_since > ttl_s + 1
            if held_long and _saved_in_new_sets(store, first.result_set.id) > saved:
                break
            time.sleep(0.2)  # polling interval of an observer, not a race fix
        assert process.poll() is None, process.stdout.read().decode()[-2000:]
        with pytest.raises(sigray.StoreLockedError):  # past the time to live: still held
            lease.acquire(store, "intruder", ttl_s=60, renew_every_s=1)
        stop(process)
        return process, _saved_in_new_sets(store, first.result_set.id)

    killed, saved = detect_until(0, kill_session)
    killed.wait(timeout=60)
    assert killed.returncode == -9 and 1 <= saved < len(names)
    assert _saved_in_new_sets(store, first.result_set.id) == saved  # what was saved stays, nothing half-written
    pd.testing.assert_frame_equal(sigray.open(store).results(first.result_set.id).table(), before)
    stopped, _ = detect_until(saved, lambda p: os.killpg(p.pid, signals.SIGTERM))  # during a later signal
    output, _ = stopped.communicate(timeout=120)
    done = _saved_in_new_sets(store, first.result_set.id)
    assert stopped.returncode == 75, output.decode()[-2000:]
    assert saved < done < len(names)  # the signal in progress finished, and the stop came before the last
    assert f"111 of 111 windows done, {done} of {len(names)} signals post-processed" in output.decode()
    finished = sigray.detect(store, pipeline_params={FIND: {"fixed_threshold": False}})
    assert finished.complete and finished.computed_windows == 0 and finished.reused_results >= done
    # All hold the same data: results saved before the kill and the stop equal the last one computed.
    for name in names[1:]:
        pd.testing.assert_frame_equal(finished.anomalies[name], finished.anomalies[CPU])
    pd.testing.assert_frame_equal(sigray.open(store).results(first.result_set.id).table(), before)
