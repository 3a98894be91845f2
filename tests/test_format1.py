"""Stores of format 1 (the last release's) stay readable as they are, and a run migrates them
keeping every answer. The stores in ``tests/data/format1`` were written by that release."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

import sigray
from sigray.cli import main as cli
from sigray.store import DONE, RunStore
from sigray.store.format1 import Format1Store
from tests.conftest import FORMAT1, NAB
from tests.crash_during_prepare import SETTINGS as MADE_WITH

SIGNAL = os.path.join(FORMAT1, "art_load_balancer_spikes.csv")
NAME = "art_load_balancer_spikes"
SETTINGS = {k: v for k, v in MADE_WITH.items() if k != "model"}  # the settings the format-1 stores were made with


def _copy(tmp_path, which: str) -> str:
    store = str(tmp_path / which)
    shutil.copytree(os.path.join(FORMAT1, which), store)
    return store


def test_status_results_evaluate_and_plot_read_a_format1_store_as_it_is(tmp_path, capsys):
    store = _copy(tmp_path, "finished")
    before = sorted(os.listdir(store))
    reader = sigray.open(store)
    assert reader.format_version == 1 and reader.signal_names == [NAME]
    assert reader.status()["done"] == 196 and reader.results().complete
    assert len(reader.results().anomalies[NAME]) == 2
    assert cli(["results", store]) == 0 and NAME in capsys.readouterr().out
    assert cli(["evaluate", store, "--labels", f"{NAB}/anomalies.csv"]) == 0
    assert cli(["plot", store, "-o", str(tmp_path / "f1.png")]) == 0
    partial = _copy(tmp_path, "partial")
    assert cli(["results", partial]) == 3 and "have no results yet" in capsys.readouterr().err
    assert sorted(os.listdir(store)) == before  # reading writes nothing


def test_a_run_migrates_a_finished_format1_store_keeping_every_answer(ray_session, tmp_path):
    store = _copy(tmp_path, "finished")
    old = Format1Store.open(store)
    old_answers = dict(zip(map(str, old.read("prompts")), old.read("answers")[:, 0].tolist()))
    old_anomalies = sigray.open(store).results().anomalies[NAME]
    result = sigray.run([SIGNAL], store, **SETTINGS)
    assert result.computed_windows == 0 and result.resumed_windows == 196
    migrated = RunStore.open(store)
    answers = dict(zip(migrated.read_prompts(), migrated.read_answers()[:, 0].tolist()))
    assert answers == old_answers
    pd.testing.assert_frame_equal(result.anomalies[NAME], old_anomalies, check_dtype=False)
    assert sigray.open(store).format_version == 2
    assert not {"prompts", "status", "answers", "results"} & set(os.listdir(store))  # format 1's arrays are gone


def test_a_partial_format1_store_keeps_its_answers_and_finishes(ray_session, tmp_path):
    store = _copy(tmp_path, "partial")
    done = np.count_nonzero(Format1Store.open(store).read("status") == DONE)
    result = sigray.run([SIGNAL], store, **SETTINGS)
    assert result.resumed_windows == done > 0 and result.computed_windows == 196 - done
    assert result.complete


def test_a_format1_store_and_other_settings_is_refused_saying_how_to_migrate(tmp_path, capsys):
    store = _copy(tmp_path, "finished")
    args = ["run", SIGNAL, "--store", store, "--engine", "test-double", "--seed", "5"]
    assert (
        cli(args + ["--param", "mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1.interval=3600"]) == 2
    )
    err = capsys.readouterr().err
    assert "The store has format 1: run once with the settings and signals it was made with" in err
    assert Format1Store.open(store).fingerprint  # untouched


@pytest.mark.parametrize("command", [["detect"], ["status"]])
def test_detect_on_a_format1_store_names_the_migration(tmp_path, capsys, command):
    store = _copy(tmp_path, "finished")
    code = cli([command[0], store])
    if command == ["detect"]:
        assert (
            code == 2 and "run `sigray run` once with its signals and settings to migrate it" in capsys.readouterr().err
        )
    else:
        assert code == 0
