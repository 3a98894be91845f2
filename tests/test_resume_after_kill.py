"""SIGKILL the `sigray run` driver mid-run, run the same command again: nothing lost, little redone."""

from __future__ import annotations

import collections
import os
import signal
import time

import numpy as np
import pandas as pd

import sigray
from sigray.store import DONE, RunStore
from tests.processes import kill_session, reap_orphans, sigkill_mid_run_then_rerun, start_cli, wait_for_done

BATCH, DELAY_S, FLUSH_S = 4, 0.25, 1.0
SETTINGS = ["--engine", "test-double", "--batch-size", str(BATCH), "--flush-interval", str(FLUSH_S)]


def generations(log_path: str) -> collections.Counter:
    with open(log_path) as f:
        return collections.Counter(line.split()[0] for line in f)


def test_resume_after_sigkill_recomputes_only_unflushed_windows(ray_session, cpu_signal, tmp_path, short_tmp):
    store, log = str(tmp_path / "run"), str(tmp_path / "generated.log")
    options = ["--engine-option", f"delay_s={DELAY_S}", "--engine-option", f"log_path={log}", "--num-cpus", "2"]
    command = ["run", cpu_signal, "--store", store, *SETTINGS, *options]
    ray_tmp = os.path.join(short_tmp, "kill")

    done_at_kill, output, returncode = sigkill_mid_run_then_rerun(command, store, 30, ray_tmp)
    prompts = RunStore.open(store).read_prompts()
    assert 30 <= len(done_at_kill) < len(prompts)
    assert returncode == 0, output[-3000:]
    assert f"{len(done_at_kill)} reused" in output

    # Nothing lost, nothing saved twice: every window done exactly once in the store.
    status, attempts = RunStore.open(store).read_state()
    assert (status == DONE).all() and (attempts == 1).all()

    # Nothing flushed is generated again; what is redone fits in one flush interval.
    from sigray.engines.test_double import _digest

    window_of = {_digest(p): w for w, p in enumerate(prompts)}
    generated = generations(log)
    redone = {window_of[d] for d, k in generated.items() if k > 1}
    assert redone.isdisjoint(done_at_kill)
    max_rate = BATCH / DELAY_S  # windows/s of the one worker
    in_flight = 2 * BATCH  # the batch being generated and the prefetched one
    assert len(redone) <= max_rate * FLUSH_S + in_flight + BATCH
    assert set(window_of.values()) == set(window_of[d] for d in generated)

    # The same anomalies as a run that was never interrupted.
    reference = sigray.run([cpu_signal], str(tmp_path / "ref"), engine="test-double", batch_size=BATCH)
    name = "cpu_utilization_asg_misconfiguration"
    resumed = sigray.open(store).results().anomalies[name]
    assert len(resumed) >= 1
    pd.testing.assert_frame_equal(resumed, reference.anomalies[name].reset_index(drop=True), check_dtype=False)
    assert (RunStore.open(store).read_answers() == RunStore.open(str(tmp_path / "ref")).read_answers()).all()


def _sigterm_then_rerun(cpu_signal, store, ray_tmp, command, when_to_term) -> int:
    """Start ``sigray run``, SIGTERM it once ``when_to_term(process)`` returns, and check the stop
    was graceful (exit 75, the message matches the store) and a rerun computes exactly the rest.
    Returns how many windows the stopped run had saved."""
    first = start_cli(command, ray_tmp)
    try:
        when_to_term(first)
        first.send_signal(signal.SIGTERM)
        output, _ = first.communicate(timeout=120)
    finally:
        kill_session(first)
        reap_orphans(ray_tmp)
    text = output.decode()
    assert first.returncode == 75, text[-3000:]
    done = int(np.count_nonzero(RunStore.open(store).read_state()[0] == DONE))
    assert f"resumable: {done} of 111 windows done" in text

    second = sigray.run([cpu_signal], store, engine="test-double", batch_size=BATCH, flush_interval_s=FLUSH_S)
    assert second.resumed_windows == done and second.computed_windows == 111 - done
    return done


def test_sigterm_stops_gracefully_with_a_resumable_exit_and_the_rerun_finishes(
    ray_session, cpu_signal, tmp_path, short_tmp
):
    """Ctrl-C (SIGINT to the whole process group, Ray's processes included) takes the same path:
    tests/test_notebook.py presses a real Jupyter kernel's stop button, which sends exactly that."""
    store = str(tmp_path / "run")
    command = ["run", cpu_signal, "--store", store, *SETTINGS, "--engine-option", f"delay_s={DELAY_S}"]
    command += ["--num-cpus", "2"]
    ray_tmp = os.path.join(short_tmp, "term")
    wait = lambda first: wait_for_done(store, 20, first)  # noqa: E731
    done = _sigterm_then_rerun(cpu_signal, store, ray_tmp, command, wait)
    assert 20 <= done < 111


def test_a_sigterm_before_the_run_reached_ray_is_a_resumable_stop_too(ray_session, cpu_signal, tmp_path, short_tmp):
    """SLURM's TERM can land while the driver still connects to Ray, whose ``ray.init`` resets SIGTERM."""
    store = str(tmp_path / "run")
    command = ["run", cpu_signal, "--store", store, *SETTINGS, "--num-cpus", "2"]

    def store_created(first):  # the store is there; Ray is starting or not yet
        while not os.path.exists(os.path.join(store, "zarr.json")):  # the pointer: written once the store is whole
            assert first.poll() is None, first.stdout.read().decode()[-3000:]
            time.sleep(0.01)  # polling interval of an observer

    _sigterm_then_rerun(cpu_signal, store, os.path.join(short_tmp, "early-term"), command, store_created)


def test_a_deadline_stops_the_run_and_a_rerun_resumes(ray_session, cpu_signal, tmp_path):
    store = str(tmp_path / "run")
    settings = {"engine": "test-double", "batch_size": 2, "flush_interval_s": FLUSH_S}
    # 111 windows at 0.5 s per batch of 2 take 28 s on one worker: a 10 s deadline (counted from the
    # start, engine loading included: margin for a loaded CI machine) stops the run part-way.
    stopped = sigray.run([cpu_signal], store, deadline_s=10, engine_options={"delay_s": 0.5}, **settings)
    assert stopped.stopped and not stopped.signals
    status, _ = RunStore.open(store).read_state()
    assert 0 < np.count_nonzero(status == DONE) < 111
    finished = sigray.run([cpu_signal], store, **settings)
    assert not finished.stopped and finished.resumed_windows == np.count_nonzero(status == DONE)
