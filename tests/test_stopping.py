"""SIGTERM is a graceful stop from the moment a run starts, also across ``ray.init`` (which resets it)."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from sigray.stopping import StopRequested, init_ray_keeping_stop


def _ray_like_init():
    """What ``ray.init`` does to a driver: a SIGTERM handler that exits at once."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))


def test_a_term_after_ray_init_replaced_the_handler_is_still_a_stop_request():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequested() as stop:
        init_ray_keeping_stop(_ray_like_init)
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread before kill returns
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_a_term_while_ray_init_runs_is_a_stop_request_not_an_exit():
    def init_interrupted():
        _ray_like_init()
        os.kill(os.getpid(), signal.SIGTERM)

    with StopRequested() as outer, StopRequested() as inner:  # the CLI's and the runner's
        init_ray_keeping_stop(init_interrupted)
        assert outer.requested and inner.requested
    with StopRequested() as fresh:  # a new run in the same process starts unsignalled
        assert not fresh.requested


def test_other_exits_from_ray_init_pass_through():
    def init_exits():
        raise SystemExit(3)

    with StopRequested(), pytest.raises(SystemExit):
        init_ray_keeping_stop(init_exits)


def test_a_deadline_is_a_stop_request():
    with StopRequested(deadline_s=0) as stop:
        assert stop.requested


def test_a_first_ctrl_c_is_a_stop_request_and_a_second_quits(capsys):
    with StopRequested() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        assert "Ctrl-C again quits at once" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.extended
def test_a_second_ctrl_c_quits_a_run_and_the_same_command_resumes_it(tmp_path, short_tmp):
    """The runner's path for a second Ctrl-C: workers killed without their graceful close, exit
    130; nothing saved is lost (windows done then are never generated again) and the same
    command finishes with the results of an uninterrupted run."""
    import numpy as np
    import pandas as pd

    import sigray
    from sigray.engines.test_double import _digest
    from sigray.store import DONE, RunStore
    from tests.conftest import nab_signal
    from tests.processes import kill_session, reap_orphans, start_cli, wait_for_done, wait_until_no_writer

    name = "cpu_utilization_asg_misconfiguration"
    store, log, ray_tmp = str(tmp_path / "run"), tmp_path / "generated.log", os.path.join(short_tmp, "ray-int")
    command = ["run", nab_signal(name), "--store", store, "--engine", "test-double", "--batch-size", "4"]
    command += ["--flush-interval", "0.5", "--engine-option", "delay_s=0.5", "--engine-option", f"log_path={log}"]
    first = start_cli(command, ray_tmp)
    try:
        wait_for_done(store, 8, first)
        first.send_signal(signal.SIGINT)  # a graceful stop begins...
        seen = []
        for line in first.stdout:  # (two signals sent at once may reach the process as one)
            seen.append(line.decode())
            if "sigray: stopping" in seen[-1]:
                break
        first.send_signal(signal.SIGINT)  # ...and the second, once the first was heard, quits
        output = "".join(seen) + first.communicate(timeout=120)[0].decode()
    finally:
        kill_session(first)
        reap_orphans(ray_tmp)
    assert first.returncode == 130, output[-3000:]
    assert "Ctrl-C again quits at once" in output
    wait_until_no_writer(store)
    opened = RunStore.open(store)
    status, _ = opened.read_state()
    done = {_digest(p) for p, s in zip(opened.read_prompts(), status) if s == DONE}
    before = len(log.read_text().splitlines())
    second = start_cli(command, ray_tmp)
    try:
        output = second.communicate(timeout=300)[0].decode()
    finally:
        kill_session(second)
        reap_orphans(ray_tmp)
    assert second.returncode == 0, output[-3000:]
    again = {line.split()[0] for line in log.read_text().splitlines()[before:]}
    assert done and not done & again  # what was saved is never asked again
    reference = sigray.run([nab_signal(name)], str(tmp_path / "reference"), engine="test-double", progress=False)
    resumed = sigray.open(store).results().anomalies[name]
    pd.testing.assert_frame_equal(resumed, reference.anomalies[name].reset_index(drop=True), check_dtype=False)
    assert np.all(RunStore.open(store).read_state()[0] == DONE)


def test_a_stop_during_the_last_signals_post_processing_stops_nothing(ray_session, tmp_path, monkeypatch):
    """A SIGTERM while `detect` post-processes its last signal: that signal finishes (a stop comes
    between signals), so the run is complete, not "stopped, run it again to resume"."""
    import sigray
    from sigray.postprocess import Detections
    from tests.conftest import nab_signal

    store = str(tmp_path / "run")
    sigray.run([nab_signal("cpu_utilization_asg_misconfiguration")], store, engine="test-double", progress=False)
    start = Detections._start

    def start_then_term(self, *args, **kwargs):
        start(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # handled as a stop request while the run is open

    monkeypatch.setattr(Detections, "_start", start_then_term)
    finder = "orion.primitives.timeseries_anomalies.find_anomalies#1"
    result = sigray.detect(store, pipeline_params={finder: {"fixed_threshold": False}})
    assert result.complete and not result.stopped and len(result.signals) == 1
