"""What a researcher reads around a run, from its store alone: pictures, exported results, status."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pandas as pd
import pytest

import sigray
from sigray.cli import main as cli
from sigray.store import PROGRESS_FILE, RunStore
from tests.conftest import NAB, generation_dir, nab_signal

FAST = {"engine": "test-double", "flush_interval_s": 0.3, "batch_size": 8, "chunk_windows": 32}
CPU = "cpu_utilization_asg_misconfiguration"
FIND = "orion.primitives.timeseries_anomalies.find_anomalies#1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_picture(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC and os.path.getsize(path) > 20_000  # axes, a signal, a legend


@pytest.fixture(scope="module")
def finished(ray_session, tmp_path_factory):
    """Two signals run to the end through the CLI, with --plot-dir."""
    root = tmp_path_factory.mktemp("finished")
    cpu = nab_signal(CPU)
    short = root / "cpu_short.csv"
    pd.read_csv(cpu).iloc[:12000].to_csv(short, index=False)
    store, plots = str(root / "run"), str(root / "plots")
    argv = ["run", cpu, str(short), "--store", store, "--engine", "test-double", "--flush-interval", "0.3"]
    assert cli([*argv, "--quiet", "--plot-dir", plots]) == 0
    return SimpleNamespace(store=store, plots=plots, signals=[cpu, str(short)])


@pytest.fixture(scope="module")
def stopped(ray_session, tmp_path_factory):
    """A run stopped part-way by a real SIGTERM once 24 windows are done (slow test-double answers,
    frequent flushes): several flushes are behind it, most windows ahead. The margin is wide on
    purpose: the stop is seen at the next one-second check and the two batches in flight finish
    (8 windows a second here: about 50 of 111 done); at 26 a second a late check could see all done."""
    import signal

    store = str(tmp_path_factory.mktemp("stopped") / "run")

    def stop_at_24(progress) -> None:
        if progress.done >= 24:
            os.kill(os.getpid(), signal.SIGTERM)  # handled as a graceful stop while the run is open

    result = sigray.run([nab_signal(CPU)], store, on_progress=stop_at_24, engine_options={"delay_s": 1.0}, **FAST)
    assert result.stopped and 0 < result.computed_windows < result.total_windows
    return store


def test_run_with_plot_dir_draws_one_picture_per_signal(finished):
    assert sorted(os.listdir(finished.plots)) == ["cpu_short.png", f"{CPU}.png"]
    assert all(_is_picture(os.path.join(finished.plots, name)) for name in os.listdir(finished.plots))


def test_plot_draws_a_signal_of_a_finished_run_with_its_labels(finished, tmp_path, capsys):
    store = finished.store
    out = tmp_path / "cpu.png"
    assert cli(["plot", store, "--signal", CPU, "-o", str(out), "--labels", f"{NAB}/anomalies.csv"]) == 0
    assert _is_picture(out) and str(out) in capsys.readouterr().out


def test_plot_of_an_unknown_signal_lists_the_known_ones(finished, tmp_path, capsys):
    store = finished.store
    assert cli(["plot", store, "--signal", "nope", "-o", str(tmp_path / "x.png")]) == 2
    assert f"holds no signal 'nope'; it holds: {CPU}, cpu_short." in capsys.readouterr().err
    assert cli(["plot", store, "-o", str(tmp_path / "x.png")]) == 2  # two signals: --signal is needed
    assert "holds 2 signals; name one with --signal" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_plot_to_a_file_that_is_no_picture_is_refused_and_labels_of_other_signals_are_named(finished, tmp_path, capsys):
    store = finished.store
    assert cli(["plot", store, "--signal", CPU, "-o", str(tmp_path / "cpu.txt")]) == 2
    err = capsys.readouterr().err
    assert "name a picture file ending in" in err and ".png" in err and "Traceback" not in err
    assert not (tmp_path / "cpu.txt").exists()
    labels = tmp_path / "labels.csv"
    labels.write_text('signal,events\nsomething_else,"[[1, 2]]"\n')
    assert cli(["plot", store, "--signal", CPU, "-o", str(tmp_path / "cpu.png"), "--labels", str(labels)]) == 0
    assert f"the labels name no signal '{CPU}' (they name something_else...)" in capsys.readouterr().err


def test_results_export_parquet_equal_to_csv_and_write_files(finished, tmp_path, capsys):
    store = finished.store
    assert cli(["results", store]) == 0
    csv = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(csv) >= 1 and list(csv.columns) == ["signal", "start", "end", "severity"]
    assert cli(["results", store, "-o", str(tmp_path / "a.parquet")]) == 0  # format from the suffix
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a.parquet"), csv, check_dtype=False)
    assert cli(["results", store, "--format", "json", "-o", str(tmp_path / "a.txt")]) == 0
    exported = json.loads((tmp_path / "a.txt").read_text())
    assert exported["complete"] is True and exported["missing_signals"] == []
    pd.testing.assert_frame_equal(pd.DataFrame(exported["anomalies"]), csv)
    assert cli(["results", store, "-o", str(tmp_path / "a.csv")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv"), csv)
    assert capsys.readouterr().out == ""


def test_store_opens_with_xarray_with_named_dimensions(finished):
    xr = pytest.importorskip("xarray")
    store = RunStore.open(finished.store, read_only=True)
    windows = xr.open_zarr(finished.store, group=f"{store.generation}/windows", consolidated=False)
    assert dict(windows.sizes) == {"window": store.n_windows, "sample": 1, "step": 1, "key_part": 2}
    assert (windows["status"].values == store.read_state()[0]).all()
    assert list(windows["answers"].values[:, 0]) == list(store.read_answers()[:, 0])
    entry = store.signal(CPU)
    signal = xr.open_zarr(finished.store, group=f"{store.generation}/signals/{entry.group}", consolidated=False)
    assert (signal["values"].values[:, 0] == pd.read_csv(nab_signal(CPU))["value"].values).all()
    chosen = sigray.open(finished.store).result_set()
    result = xr.open_zarr(
        finished.store, group=f"{store.generation}/results/{chosen.id}/{entry.group}", consolidated=False
    )
    assert result["start"].dims == ("anomaly",) and result["forecast"].sizes["forecast"] > 0


def test_the_reader_gives_settings_windows_forecasts_and_an_xarray_view(finished):
    reader = sigray.open(finished.store)
    assert reader.settings["pipeline"] == "mistral_detector" and reader.settings["engine"] == "test-double"
    table = reader.to_pandas()
    assert list(table.columns) == ["signal", "window", "status", "attempts", "reason"]
    assert len(table) == sum(state.windows for state in reader.signal_states()) and set(table.status) == {"done"}
    forecast = reader.forecast(CPU)
    assert list(forecast.columns) == ["timestamp", "forecast"] and forecast["forecast"].notna().all()
    pytest.importorskip("xarray")
    assert reader.to_xarray().sizes["window"] == RunStore.open(finished.store).n_windows


def test_the_readers_window_table_shows_a_stopped_runs_pending_windows(stopped):
    table = sigray.open(stopped).to_pandas()
    assert {"done", "pending"} <= set(table.status)


def test_results_as_parquet_without_pyarrow_names_the_extra(finished, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    assert cli(["results", finished.store, "--format", "parquet"]) == 2
    assert "pip install 'sigray[export]'" in capsys.readouterr().err


def test_status_of_a_stopped_run_shows_its_last_update_and_an_eta(stopped, capsys):
    assert cli(["status", stopped, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert 0 < status["pending"] < status["windows"]
    assert 0 <= status["last_update_age_s"] < 120
    assert status["windows_per_s"] > 0
    expected = status["pending"] / status["windows_per_s"]
    assert status["eta_s"] == pytest.approx(expected, rel=0.05, abs=0.05)  # eta_s is rounded to 0.1 s
    assert cli(["status", stopped]) == 0
    text = capsys.readouterr().out
    assert "last update: " in text and " ago)" in text
    assert "ETA: " in text and "windows/s (not running now)" in text


def test_status_without_progress_samples_says_unknown(stopped, tmp_path, capsys):
    store = str(tmp_path / "copy")
    shutil.copytree(stopped, store)
    with open(os.path.join(generation_dir(store), PROGRESS_FILE), "w") as f:
        f.write("{not json")
    assert cli(["status", store]) == 0
    text = capsys.readouterr().out
    assert "last update: unknown" in text and "ETA: unknown" in text


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_results_of_an_unfinished_run_never_look_complete(stopped, tmp_path, capsys, fmt):
    """Not the exit code, nor stderr, nor the file of a finished run with no anomalies."""
    out = str(tmp_path / f"anomalies.{fmt}")
    assert cli(["results", stopped, "-o", out]) == 3
    err = capsys.readouterr().err
    assert f"incomplete: 1 of 1 signal(s) have no results yet in this result set: {CPU}." in err
    assert f"windows still pending ({CPU}): run the command that made them again" in err
    if fmt == "json":
        data = json.loads(open(out).read())
        assert data["complete"] is False and data["missing_signals"] == [CPU] and data["anomalies"] == []
    if fmt == "parquet":
        import pyarrow.parquet as pq

        summary = json.loads(pq.read_schema(out).metadata[b"sigray"])
        assert summary["complete"] is False and summary["missing_signals"] == [CPU]
    assert not sigray.open(stopped).results().complete


def test_detect_on_an_unfinished_run_never_says_no_anomalies_found(stopped, capsys):
    assert cli(["detect", stopped]) == 3
    captured = capsys.readouterr()
    assert "no anomalies found" not in captured.out
    assert f"incomplete: 1 signal(s) have windows still pending and no results: {CPU}." in captured.err


def test_evaluate_and_plot_of_an_unfinished_run_say_which_signals_are_missing(stopped, tmp_path, capsys):
    assert cli(["evaluate", stopped, "--labels", f"{NAB}/anomalies.csv", "--json"]) == 3  # nothing to score yet
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"complete": False, "missing_signals": [CPU], "scores": []}
    assert "incomplete: 1 of 1 signal(s)" in captured.err
    out = str(tmp_path / "cpu.png")
    assert cli(["plot", stopped, "-o", out]) == 3  # the signal is drawn, without detections
    err = capsys.readouterr().err
    assert "has not finished this signal" in err and "Traceback" not in err and _is_picture(out)


def test_a_stopped_run_says_so_in_json_too(ray_session, tmp_path, capsys):
    args = ["run", nab_signal(CPU), "--store", str(tmp_path / "run"), "--engine", "test-double", "--json"]
    args += ["--deadline", "2", "--engine-option", "delay_s=0.3", "--batch-size", "8"]  # 14 batches: 4 s at least
    assert cli(args) == 75
    printed = json.loads(capsys.readouterr().out)
    assert printed["stopped"] is True and printed["complete"] is False and "resumable:" in printed["message"]
    assert printed["missing_signals"] == [CPU]  # stopped before its result: listed, as `sigray results` lists it


def test_json_is_alone_on_stdout_when_ray_reports_a_worker_that_died(tmp_path, short_tmp):
    """A worker SIGKILLed mid-run makes Ray print "A worker died..." in the driver: with --json
    that goes to stderr, and stdout parses as the run's JSON (tools pipe it to jq)."""
    from tests.processes import reap_orphans

    marker, ray_tmp = str(tmp_path / "killed"), os.path.join(short_tmp, "json")
    args = ["run", nab_signal(CPU), "--store", str(tmp_path / "run"), "--engine", "test-double", "--json"]
    args += ["--batch-size", "4", "--engine-option", f"sigkill_once_path={marker}", "--engine-option", "delay_s=0.05"]
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sigray.cli", *args], capture_output=True, text=True, env=env, timeout=300
        )
    finally:
        reap_orphans(ray_tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.path.exists(marker), "no worker was killed"
    printed = json.loads(done.stdout)
    assert printed["complete"] is True and printed["workers_replaced"] >= 1
    assert "worker died" in done.stderr  # Ray said it, where it belongs


def test_a_finished_run_with_failed_windows_says_what_was_left_out(ray_session, tmp_path, capsys):
    store = str(tmp_path / "run")
    sigray.run([nab_signal(CPU)], store, max_attempts=1, engine_options={"garbage_rate": 0.2}, **FAST)
    failed = len(sigray.open(store).failures())
    assert failed > 0
    assert cli(["results", store, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["complete"] is True and data["failed_windows"] == {CPU: failed}
    assert cli(["results", store]) == 0
    assert f"{CPU}: {failed} window(s) failed and were left out of its results." in capsys.readouterr().err
    assert cli(["status", store, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert sum(status["failure_reasons"].values()) == failed == status["signals"][0]["failed"]
    assert all("no valid answer in 1 attempt; last:" in reason for reason in sigray.open(store).failures()["reason"])


def test_a_run_where_no_window_got_a_valid_answer_never_says_no_anomalies_found(ray_session, tmp_path, capsys):
    store = str(tmp_path / "run")
    args = ["run", nab_signal(CPU), "--store", store, "--engine", "test-double", "--max-attempts", "1"]
    args += ["--engine-option", "garbage_rate=1.0", "--batch-size", "64"]
    assert cli(args) == 1
    printed = capsys.readouterr()
    assert "no anomalies found" not in printed.out and "111 failed" in printed.out
    assert f"no valid answer for any window of 1 signal(s) ({CPU}): nothing was detected there" in printed.err
    assert cli(["detect", store]) == 1  # read again from the store: the same
    assert "no valid answer for any window" in capsys.readouterr().err
    with pytest.warns(sigray.SigrayWarning, match=r"no valid answer for any window of 1 signal\(s\)"):
        assert sigray.detect(store).unanswered == [CPU]  # Python users are told too
    assert cli(["results", store]) == 1  # its table is empty, and says why
    printed = capsys.readouterr()
    assert printed.out.strip() == "signal,start,end,severity"
    assert f"{CPU}: none of its 111 window(s) got a valid answer, so its result (nothing found) means" in printed.err
    assert sigray.open(store).results().unanswered == [CPU]
    assert cli(["status", store]) == 0
    assert "111 failed; results saved, but no window got a valid answer" in capsys.readouterr().out


def test_plot_of_an_unfinished_run_says_so_and_works_once_it_finished(stopped, tmp_path, capsys):
    store = str(tmp_path / "copy")
    shutil.copytree(stopped, store)
    sigray.run([nab_signal(CPU)], store, **FAST)
    out = str(tmp_path / "cpu.png")
    assert cli(["plot", store, "-o", out]) == 0 and _is_picture(out)  # one signal: --signal may be left out
    assert cli(["results", store]) == 0


@pytest.mark.parametrize("command", [["status"], ["results"], ["results", "--format", "json"], ["results", "--sets"]])
def test_output_cut_short_by_its_reader_is_no_error(finished, command):
    """`sigray status | head -1`: the reader went away; no traceback, the exit code of a broken pipe."""
    import subprocess

    process = subprocess.Popen(
        [sys.executable, "-m", "sigray.cli", command[0], finished.store, *command[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader leaves before reading a byte
    err = process.stderr.read().decode()
    assert process.wait() in (0, 141), err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_a_picture_that_cannot_be_drawn_never_fails_a_finished_run(ray_session, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the pictures' folder should be")
    args = ["run", nab_signal(CPU), "--store", str(tmp_path / "run"), "--engine", "test-double"]
    assert cli([*args, "--plot-dir", str(blocker)]) == 0
    captured = capsys.readouterr()
    assert "windows:" in captured.out and captured.out.index("windows:") < len(captured.out)
    assert f"sigray: warning: no picture of '{CPU}'" in captured.err and "Traceback" not in captured.err


def test_settings_that_would_fail_post_processing_are_refused_before_anything_runs(finished, tmp_path, capsys):
    """A value sigllm or Orion cannot take fails at once, with no result set left behind."""
    store = str(tmp_path / "copy")
    shutil.copytree(finished.store, store)
    sets = [s.id for s in sigray.open(store).result_sets()]
    cases = [
        (f"{FIND}.window_size_portion=abc", "expected a number in [0.01, 1.0]"),
        (f"{FIND}.window_size_portion=-1", "expected a number in [0.01, 1.0]"),  # Orion would loop forever
        (
            f"{FIND}.window_size_portio=0.5",
            "has no parameter 'window_size_portio'. Did you mean 'window_size_portion'?",
        ),
        (f"{FIND}.fixed_threshold=yes", "expected true or false"),
    ]
    for param, message in cases:
        for command in (["detect", store], ["run", *finished.signals, "--store", store, "--engine", "test-double"]):
            assert cli([*command, "--param", param]) == 2, (command, param)
            err = capsys.readouterr().err
            assert message in err and "Traceback" not in err, err
    assert [s.id for s in sigray.open(store).result_sets()] == sets
    assert cli(["results", store, "-o", str(tmp_path / "out.xlsx")]) == 2
    assert "cannot tell the format of" in capsys.readouterr().err and not (tmp_path / "out.xlsx").exists()


def test_result_sets_are_listed_selected_and_compared(finished, tmp_path, capsys):
    store = str(tmp_path / "copy")
    shutil.copytree(finished.store, store)
    first = sigray.open(store).result_set()
    assert cli(["detect", store, "--param", f"{FIND}.window_size_portion=0.5", "--quiet"]) == 0
    assert cli(["results", store, "--sets"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2 and "window_size_portion=0.5  <- shown when --set is not given" in listed[0]
    assert first.id in listed[1]
    assert cli(["results", store, "--set", first.id]) == 0
    pd.testing.assert_frame_equal(
        pd.read_csv(io.StringIO(capsys.readouterr().out)),
        sigray.open(store).results(first.id).table(),
        check_dtype=False,
    )
    assert cli(["evaluate", store, "--labels", f"{NAB}/anomalies.csv", "--set", first.id, "--set", "portion"]) == 2
    err = capsys.readouterr().err  # a fragment of a name is neither an id's prefix nor a whole name
    assert "--set 'portion' matches no result set; the store's result sets: " in err and first.id in err
    newest = sigray.open(store).result_set().id
    assert cli(["evaluate", store, "--labels", f"{NAB}/anomalies.csv", "--set", first.id, "--set", newest]) == 0
    table = capsys.readouterr().out
    assert "defaults" in table and "window_size_portion=0.5" in table
    out = str(tmp_path / "two.png")
    assert cli(["plot", store, "--signal", CPU, "-o", out, "--set", first.id, "--set", newest]) == 0 and _is_picture(
        out
    )


def test_a_run_result_prints_as_a_summary_not_its_arrays():
    """A notebook shows ``model.last_result``: a line of figures, not thousands of forecast values."""
    import numpy as np
    import pandas as pd

    from sigray.postprocess import SignalResult
    from sigray.runner import RunResult

    anomalies = pd.DataFrame({"start": [10, 50], "end": [20, 60], "severity": [0.5, 0.9]})
    signal = SignalResult("cpu", anomalies, [3], 4000, forecast=np.arange(10_000.0), forecast_index=np.arange(10_000))
    result = RunResult(store="runs/cpu", n_signals=1, total_windows=4000, computed_windows=3999, failed_windows=1)
    result.signals["cpu"] = signal
    assert repr(signal) == "SignalResult('cpu': 2 anomalies, 4000 windows, 1 failed, forecast of 10000 points)"
    text = repr(result)
    assert text.startswith("RunResult('runs/cpu': complete, 1 of 1 signal(s) with results, 4000 windows")
    assert "3999 computed" in text and "1 failed" in text and len(text) < 200
    result.stopped = True
    assert "stopped" in repr(result)


def test_odd_timestamps_are_named_by_their_csv_lines_once_when_read_and_not_again_by_detect(ray_session, tmp_path):
    store = str(tmp_path / "run")
    with pytest.warns(sigray.SigrayWarning, match=r"timestamps repeat at row\(s\) 10151, 10152"):
        sigray.run([nab_signal("machine_temperature_system_failure")], store, **FAST)  # line 1 is the header
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sigray.detect(store)
    assert not [w for w in caught if "timestamps repeat" in str(w.message)]


def test_quiet_prints_nothing_but_warnings_even_when_it_starts_ray(tmp_path, short_tmp):
    """`--quiet` in a process of its own, which starts a local Ray: Ray's own notices are information too."""
    from sigray.testing.processes import reap_orphans, start_cli

    ray_tmp = os.path.join(short_tmp, "quiet")
    run = start_cli(
        ["run", nab_signal(CPU), "--store", str(tmp_path / "run"), "--engine", "test-double", "--quiet"], ray_tmp
    )
    try:
        output, _ = run.communicate(timeout=300)
    finally:
        reap_orphans(ray_tmp)
    assert run.returncode == 0 and output.decode().strip() == "", output.decode()[-2000:]
    assert sigray.open(str(tmp_path / "run")).results().complete


def test_sigrays_log_lines_read_as_its_other_messages():
    """In the CLI a note such as "signal 'x': extended from N to M points" reads "sigray: warning:
    ...", as sigray's warnings and errors do; other libraries' lines keep their level and name."""
    import logging

    from sigray.cli import _LogFormat

    def line(name: str, message: str, *args) -> str:
        return _LogFormat().format(logging.LogRecord(name, logging.WARNING, __file__, 1, message, args, None))

    assert line("sigray.runner", "store %s: %s", "run", "extended") == "sigray: warning: store run: extended"
    assert line("ray.worker", "a worker died") == "WARNING ray.worker: a worker died"
