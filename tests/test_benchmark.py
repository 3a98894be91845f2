"""`sigray benchmark`: every signal on the leaderboard, the runnable ones run, resumable per window.

Real NAB signals (tests/data/nab_orion: 9 of its 13 are too short for mistral_detector's
6-hour windows), the deterministic test-double engine, Orion's labels and scores.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time

import pandas as pd
import pytest

import sigray
import sigray.runner
from sigray.benchmark import ERROR, OK, PENDING, benchmark
from sigray.cli import main as cli
from sigray.evaluate import evaluate, load_labels
from tests.conftest import NAB

LABELS = os.path.join(NAB, "anomalies.csv")
RUN = ["--engine", "test-double", "--batch-size", "64", "--flush-interval", "0.5"]
CPU = "cpu_utilization_asg_misconfiguration"
SHORT = "art_daily_no_noise"


def _folder(tmp_path, *names: str) -> str:
    """A dataset folder of NAB signals with Orion's labels file beside them (not a signal)."""
    folder = tmp_path / "nab"
    folder.mkdir()
    for name in names:
        shutil.copy(os.path.join(NAB, f"{name}.csv"), folder)
    shutil.copy(LABELS, folder)
    return str(folder)


def test_every_signal_has_a_row_the_runnable_ones_are_scored_and_a_rerun_computes_nothing(
    ray_session, tmp_path, capsys, monkeypatch
):
    store, out = str(tmp_path / "store"), str(tmp_path / "board")
    command = ["benchmark", NAB, "--labels", LABELS, "--store", store, "-o", out, *RUN]
    assert cli(command) == 0
    printed = capsys.readouterr()
    assert "9 of 13 signal(s) not run" in printed.err and "too short for one window" in printed.err
    first = re.search(r"windows: (\d+) in 1 store\(s\): 0 reused, (\d+) generated, 0 failed", printed.out)
    assert first and first[1] == first[2]

    board = pd.read_csv(os.path.join(out, "leaderboard.csv"))
    signals = sorted(f[:-4] for f in os.listdir(NAB) if f.endswith(".csv") and not f.startswith("anomalies"))
    assert sorted(board["signal"]) == signals  # the labels files are no signals; no signal is dropped
    assert (board["dataset"] == "nab_orion").all() and (board["pipeline"] == "mistral_detector").all()
    errors, scored = board[board["status"] == ERROR], board[board["status"] == OK]
    assert len(errors) == 9 and errors["reason"].str.contains("too short for one window").all()
    assert errors["f1"].isna().all() and errors["windows"].isna().all()
    assert len(scored) == 4 and (scored["windows"] > 0).all() and (scored["failed_windows"] == 0).all()

    # The same scores as `sigray evaluate` of the store (Orion's weighted contextual metrics).
    anomalies = sigray.open(store).results().anomalies
    expected = evaluate(anomalies, load_labels(LABELS)).query("method == 'weighted' and signal != 'ALL'")
    merged = scored.merge(expected, on="signal", suffixes=("", "_evaluate"))
    assert len(merged) == 4
    for column in ("precision", "recall", "f1", "tp", "fp", "fn"):
        assert merged[column].to_numpy() == pytest.approx(merged[f"{column}_evaluate"].to_numpy())

    datasets = pd.read_csv(os.path.join(out, "datasets.csv")).set_index("dataset")
    assert datasets.loc["ALL", "signals"] == 13 and datasets.loc["ALL", "errors"] == 9
    assert datasets.loc["ALL", "tp"] == pytest.approx(scored["tp"].sum())
    assert datasets.loc["ALL", "windows"] == scored["windows"].sum()
    assert os.path.getsize(os.path.join(out, "leaderboard.png")) > 10_000

    # Again: every window and every result is in the store; no engine, no Ray, the same leaderboard.
    monkeypatch.setattr(sigray.runner, "_ensure_ray", lambda options: pytest.fail("a finished benchmark started Ray"))
    assert cli(command) == 0
    pd.testing.assert_frame_equal(pd.read_csv(os.path.join(out, "leaderboard.csv")), board)
    assert f"windows: {first[1]} in 1 store(s): {first[1]} reused, 0 generated, 0 failed" in capsys.readouterr().out


def test_a_stopped_benchmark_lists_its_unfinished_signals_and_a_rerun_finishes_them(ray_session, tmp_path, capsys):
    folder = _folder(tmp_path, CPU, SHORT)
    store = str(tmp_path / "store")
    settings = {"engine": "test-double", "batch_size": 16, "flush_interval_s": 0.5}

    out = str(tmp_path / "board")
    assert cli(["benchmark", folder, "--labels", LABELS, "--store", store, "-o", out, *RUN, "--deadline", "0"]) == 75
    line = capsys.readouterr().out.strip().splitlines()[-1]  # the benchmark's count, then the store it stopped in
    assert line.startswith(f"resumable: 1 of 2 signal(s) still pending; stopped in {store}: 0 of 111 windows done")
    stopped = benchmark([folder], store, LABELS, deadline_s=0, **settings)
    assert stopped.stopped and not stopped.complete
    status = dict(zip(stopped.signals["signal"], stopped.signals["status"]))
    assert status == {CPU: PENDING, SHORT: ERROR}  # never dropped, never looking scored
    assert stopped.datasets.set_index("dataset").loc["ALL", "pending"] == 1

    finished = benchmark([folder], store, LABELS, **settings)
    assert finished.complete and not finished.stopped
    row = finished.signals.set_index("signal").loc[CPU]
    assert row["status"] == OK and row["f1"] > 0
    assert finished.result.resumed_windows + finished.result.computed_windows == row["windows"]


def test_a_signal_fixed_after_an_error_runs_on_the_rerun(ray_session, tmp_path):
    """Orion's resume keeps an error row forever; here the fixed file is read again."""
    folder = _folder(tmp_path, CPU)
    short = os.path.join(folder, "pump.csv")
    pd.read_csv(os.path.join(NAB, f"{CPU}.csv")).head(50).to_csv(short, index=False)
    store = str(tmp_path / "store")
    settings = {"engine": "test-double", "batch_size": 64}

    first = benchmark([folder], store, LABELS, **settings).signals.set_index("signal")
    assert first.loc["pump", "status"] == ERROR and first.loc[CPU, "status"] == OK

    shutil.copy(os.path.join(NAB, f"{CPU}.csv"), short)  # the fix: the whole signal
    second = benchmark([folder], store, LABELS, **settings)
    rows = second.signals.set_index("signal")
    assert rows.loc["pump", "status"] == OK and rows.loc["pump", "reason"] == "not in the labels file: not scored"
    assert second.datasets.set_index("dataset").loc["ALL", "scored"] == 1
    assert second.result.computed_windows == 0  # the same windows as the CPU signal's: answered once


@pytest.mark.parametrize(
    "change, expected",
    [
        ("no_labels", "labels file"),
        ("labels_of_other_signals", "names none of the 1 signals"),
        ("output_is_a_file", "is a file; name a folder for the leaderboard"),
        ("empty_folder", "no signal CSV files"),
        ("same_name", "two signals are named"),
        ("bad_method", "invalid choice"),
    ],
)
def test_bad_benchmark_input_is_refused_before_anything_is_written(
    tmp_path, capsys, ray_must_not_start, change, expected
):
    folder, store, out = _folder(tmp_path, CPU), str(tmp_path / "store"), str(tmp_path / "board")
    labels, paths, extra = LABELS, [folder], []
    if change == "no_labels":
        labels = str(tmp_path / "missing.csv")
    elif change == "labels_of_other_signals":
        labels = str(tmp_path / "other.csv")
        with open(labels, "w") as f:
            f.write('signal,events\nsomething_else,"[[1, 2]]"\n')
    elif change == "output_is_a_file":
        open(out, "w").close()
    elif change == "empty_folder":
        paths = [str(tmp_path / "empty")]
        os.mkdir(paths[0])
    elif change == "same_name":
        paths.append(os.path.join(NAB, f"{CPU}.csv"))
    else:
        extra = ["--method", "f1"]
    with pytest.raises(SystemExit) if change == "bad_method" else contextlib.nullcontext():
        assert cli(["benchmark", *paths, "--labels", labels, "--store", store, "-o", out, *RUN, *extra]) == 2
    assert expected in capsys.readouterr().err
    assert not os.path.exists(store)
    assert change == "output_is_a_file" or not os.path.exists(out)  # -o is made only once there is a leaderboard


def test_a_dataset_sigllm_has_parameters_for_runs_with_them_in_a_store_of_its_own(ray_session, tmp_path):
    """sigllm's ``prompter_<dataset>.json`` files apply by dataset (folder) name, as its own
    benchmark applies them; ``--param`` wins over them; other datasets run as usual."""
    from sigray.benchmark import dataset_parameters
    from sigray.store import RunStore

    aggregate = "mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1"
    assert dataset_parameters("mistral_prompter", "realTweets")[aggregate]["interval"] == 600
    assert dataset_parameters("gpt_prompter", "SMAP")[aggregate]["interval"] == 21600
    assert dataset_parameters("mistral_detector", "realTweets") == {}  # sigllm has none for detectors
    assert dataset_parameters("mistral_prompter", "nab") == {}
    # a one-shot prompter's normal reference is aggregated alike (sigllm's _augment_hyperparameters)
    one_shot = dataset_parameters("mistral_prompter_1shot", "realTweets")
    assert one_shot[aggregate]["interval"] == one_shot[aggregate[:-1] + "2"]["interval"] == 600
    assert aggregate[:-1] + "2" not in dataset_parameters("mistral_prompter", "realTweets")

    tweets = tmp_path / "realTweets"
    tweets.mkdir()
    shutil.copy(os.path.join(NAB, f"{CPU}.csv"), tweets)
    nab = _folder(tmp_path, "nyc_taxi")
    store = str(tmp_path / "store")
    settings = {"engine": "test-double", "pipeline": "mistral_prompter", "batch_size": 64, "progress": False}
    board = benchmark([nab, str(tweets)], store, LABELS, **settings)
    assert board.complete and list(board.runs) == [store, f"{store}-realtweets"]
    assert board.runs[f"{store}-realtweets"].workers_reused == 1  # the first store's engine, still loaded
    assert sorted(board.signals["dataset"]) == ["nab", "realTweets"] and (board.signals["status"] == OK).all()
    params = {path: RunStore.open(path).config["pipeline_params"] for path in board.runs}
    assert aggregate not in params[store]
    assert params[f"{store}-realtweets"][aggregate]["interval"] == 600
    windows = board.signals.set_index("signal")["windows"]
    assert windows[CPU] > 100  # 10-minute points: some 200 windows, where sigllm's default 6 hours gives 2

    # --param wins over the dataset's file; another setting is another store's generation: refused.
    hourly = {aggregate: {"interval": 3600}}
    with pytest.raises(sigray.ConfigMismatchError):
        benchmark([str(tweets)], store, LABELS, pipeline_params=hourly, **settings)
    again = benchmark([str(tweets)], str(tmp_path / "hourly"), LABELS, pipeline_params=hourly, **settings)
    assert RunStore.open(f"{tmp_path / 'hourly'}-realtweets").config["pipeline_params"][aggregate]["interval"] == 3600
    assert again.signals.set_index("signal")["windows"][CPU] < windows[CPU]


@pytest.mark.parametrize(
    "failing, engine_options",
    [
        ("ambient_temperature_system_failure", {"context_chars": 10**6}),  # windowed first: by the engine's check
        ("ambient_temperature_system_failure", {}),  # windowed first: registered as the store is prepared
        ("nyc_taxi", {}),  # windowed while the first signals' windows run
    ],
)
def test_a_signal_sigllm_fails_to_window_is_an_error_row_and_the_others_run_once(
    ray_session, tmp_path, monkeypatch, caplog, failing, engine_options
):
    """The benchmark windows each signal where it is first used, not at planning (issue 16.3): a
    failure no check foresees ends the run attempt, which goes on without that signal from what
    is saved; --new replaces the store once, never the answers made since."""
    from sigray.errors import WindowingError
    from sigray.pipelines.sigllm_pipeline import SigllmPipeline

    windowing = SigllmPipeline.plan

    def fails_on_one(self, signal, normal=None):  # a test double of a sigllm failure no check foresees
        if signal.name == failing:
            if failing == "nyc_taxi":  # mid-run: once the engines answer (they serve the next attempt)
                deadline = time.monotonic() + 120
                while not os.path.exists(log) or os.path.getsize(log) == 0:
                    assert time.monotonic() < deadline, "no window answered"
                    time.sleep(0.1)  # polling interval of an observer
            raise WindowingError(signal.name, f"sigllm could not window signal {signal.name!r} (a test double).")
        return windowing(self, signal, normal)

    names = ["ambient_temperature_system_failure", CPU, "machine_temperature_system_failure", "nyc_taxi"]
    folder, store, log = _folder(tmp_path, *names), str(tmp_path / "store"), str(tmp_path / "generated")
    monkeypatch.setattr(SigllmPipeline, "plan", fails_on_one)
    options = {**engine_options, "log_path": log}
    settings = {"engine": "test-double", "batch_size": 8, "flush_interval_s": 0.2, "engine_options": options}
    board = benchmark([folder], store, LABELS, new=True, progress=False, **settings)

    rows = board.signals.set_index("signal")
    assert rows.loc[failing, "status"] == ERROR and "(a test double)" in rows.loc[failing, "reason"]
    said = f"sigllm could not window signal '{failing}' (a test double). (On its ERROR row; the others go on.)"
    assert said in caplog.text
    assert (rows.drop(index=failing)["status"] == OK).all() and board.complete
    with open(log) as f:
        prompts = [line.split()[0] for line in f]
    assert len(prompts) == len(set(prompts)) == board.result.total_windows  # each window asked once
    # After a signal stopped a run, its engines serve the next attempt (a GPU model is not loaded again).
    assert board.result.workers_reused == (1 if failing == "nyc_taxi" else 0)
    assert rows.drop(index=failing)["windows"].sum() >= board.result.total_windows
