"""What a run shows while it works, where nobody watches a terminal (a log, a batch job's output)."""

from __future__ import annotations

from sigray.api import run_config
from sigray.messages import Progress
from sigray.plan import make_plan
from sigray.progress import ProgressDisplay, in_notebook
from tests.conftest import nab_signal


def _progress(done: int, total: int = 10) -> Progress:
    return Progress(total, done, 0, 0, 0, 0, 2.0, done == total)


def test_a_log_gets_timed_lines_and_always_the_last_state(capsys):
    with ProgressDisplay(every_s=3600) as display:
        for done in range(1, 11):
            display(_progress(done))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # the first, then (every 3600 s) none until the run ends with its last state
    assert "progress: 1/10 done" in lines[0] and "progress: 10/10 done" in lines[1]
    assert lines[0][2] == ":" and lines[0][5] == ":"  # HH:MM:SS first


def test_a_machine_booted_minutes_ago_gets_its_first_line_too(capsys, monkeypatch):
    """time.monotonic() counts from boot on Linux: a fresh CI machine's is below every_s."""
    monkeypatch.setattr("sigray.progress.time.monotonic", lambda: 120.0)
    with ProgressDisplay(every_s=3600) as display:
        display(_progress(1))
        display.planned(1, 2)
    assert "progress: 1/10 done" in capsys.readouterr().err


def test_a_run_whose_signals_are_still_being_windowed_says_so(capsys):
    """The total grows as signals join (``sigray.feed``): the line says it is not the last word."""
    import dataclasses

    with ProgressDisplay(every_s=0) as display:
        display(dataclasses.replace(_progress(1), signals_to_add=3))
        display(_progress(2))
    first, second = capsys.readouterr().err.splitlines()
    assert "1/10 done (and 3 signal(s) still being windowed)," in first and "still" not in second


def test_quiet_shows_nothing(capsys):
    with ProgressDisplay(quiet=True, every_s=0) as display:
        display(_progress(5))
        display.planned(1, 2)
    assert capsys.readouterr().err == ""


def test_planning_reports_each_signal_read(capsys):
    seen = []
    config = run_config("unused", {"engine": "test-double", "pipeline_params": {}})
    signals = [nab_signal("nyc_taxi"), nab_signal("cpu_utilization_asg_misconfiguration")]
    make_plan(config, signals, on_planned=lambda k, n: seen.append((k, n)))
    assert seen == [(1, 2), (2, 2)]
    ProgressDisplay(every_s=0).planned(1, 2)
    assert "planning: 1 of 2 signals read and checked" in capsys.readouterr().err


def test_a_plain_process_is_no_notebook():
    assert not in_notebook()
