"""What a researcher reads around a run, from its store alone: pictures, exported results, status."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

import sigray
from sigray.cli import main as cli
from sigray.store import PROGRESS_FILE, RunStore
from tests.conftest import NAB, nab_signal

FAST = {"engine": "test-double", "flush_interval_s": 0.3, "batch_size": 8, "chunk_windows": 32}
CPU = "cpu_utilization_asg_misconfiguration"
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
    """A run a deadline stopped part-way (slow test-double answers, frequent flushes)."""
    store = str(tmp_path_factory.mktemp("stopped") / "run")
    result = sigray.run([nab_signal(CPU)], store, deadline_s=3, engine_options={"delay_s": 0.3}, **FAST)
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


def test_plot_of_a_store_written_before_signals_were_saved_says_how_to_save_them(finished, tmp_path, capsys):
    store = str(tmp_path / "old")
    shutil.copytree(finished.store, store)
    for index in (0, 1):
        for name in ("signal_timestamps", "signal_values"):
            shutil.rmtree(os.path.join(store, "results", str(index), name))
    out = str(tmp_path / "old.png")
    assert cli(["plot", store, "--signal", CPU, "-o", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "older sigray that did not save the signal" in err and "Traceback" not in err
    # The advice holds: the same command again recomputes nothing and saves the signals.
    again = sigray.run(finished.signals, store, engine="test-double", flush_interval_s=0.3)
    assert again.computed_windows == 0
    assert cli(["plot", store, "--signal", CPU, "-o", out]) == 0 and _is_picture(out)


def test_results_export_parquet_equal_to_csv_and_write_files(finished, tmp_path, capsys):
    store = finished.store
    assert cli(["results", store]) == 0
    csv = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(csv) >= 1 and list(csv.columns) == ["signal", "start", "end", "severity"]
    assert cli(["results", store, "-o", str(tmp_path / "a.parquet")]) == 0  # format from the suffix
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a.parquet"), csv, check_dtype=False)
    assert cli(["results", store, "--format", "json", "-o", str(tmp_path / "a.txt")]) == 0
    pd.testing.assert_frame_equal(pd.DataFrame(json.loads((tmp_path / "a.txt").read_text())), csv)
    assert cli(["results", store, "-o", str(tmp_path / "a.csv")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv"), csv)
    assert capsys.readouterr().out == ""


def test_store_opens_with_xarray_with_named_dimensions(finished):
    xr = pytest.importorskip("xarray")
    store = RunStore.open(finished.store, read_only=True)
    windows = xr.open_zarr(finished.store, consolidated=False)
    assert dict(windows.sizes) == {
        "window": store.layout.n_windows,
        "sample": store.layout.n_samples,
        "step": store.layout.horizon,
    }
    assert (windows["status"].values == store.group["status"][:]).all()
    assert list(windows["answers"].values[:, 0]) == list(store.group["answers"][:, 0])
    result = xr.open_zarr(finished.store, group="results/0", consolidated=False)
    assert result.attrs["signal"] == CPU
    assert (result["signal_values"].values == pd.read_csv(nab_signal(CPU))["value"].values).all()
    assert result["start"].dims == ("anomaly",) and result["forecast"].sizes["forecast"] > 0


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
    assert status["eta_s"] == pytest.approx(status["pending"] / status["windows_per_s"], rel=0.05)
    assert cli(["status", stopped]) == 0
    text = capsys.readouterr().out
    assert "last update: " in text and " ago)" in text
    assert "ETA: " in text and "windows/s (not running now)" in text


def test_status_without_progress_samples_says_unknown(stopped, tmp_path, capsys):
    store = str(tmp_path / "copy")
    shutil.copytree(stopped, store)
    (tmp_path / "copy" / PROGRESS_FILE).write_text("{not json")
    assert cli(["status", store]) == 0
    text = capsys.readouterr().out
    assert "last update: unknown" in text and "ETA: unknown" in text


def test_plot_of_an_unfinished_run_says_so_and_works_once_it_finished(stopped, tmp_path, capsys):
    store = str(tmp_path / "copy")
    shutil.copytree(stopped, store)
    out = str(tmp_path / "cpu.png")
    assert cli(["plot", store, "-o", out]) == 2
    err = capsys.readouterr().err
    assert "has not finished" in err and "Run the same command again" in err and err.count("\n") == 1
    sigray.run([nab_signal(CPU)], store, **FAST)
    assert RunStore.open(store).read_result(0) is not None
    assert cli(["plot", store, "-o", out]) == 0 and _is_picture(out)  # one signal: --signal may be left out
