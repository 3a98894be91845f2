"""Whole runs on a real local Ray cluster and a real Zarr store, with the test-double engine."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

import sigray
from sigray.store import DONE, FAILED, RunStore

FAST = {"engine": "test-double", "flush_interval_s": 0.5, "batch_size": 16, "chunk_windows": 32}


def test_a_run_finds_the_anomaly_and_saves_everything(ray_session, cpu_signal, tmp_path):
    store = str(tmp_path / "run")
    result = sigray.run([cpu_signal], store, workers=2, **FAST)
    anomalies = result.anomalies["cpu_utilization_asg_misconfiguration"]
    assert list(anomalies.columns) == ["start", "end", "severity"]
    assert len(anomalies) >= 1
    assert result.computed_windows == result.total_windows == 111
    status, attempts = RunStore.open(store).read_state()
    assert (status == DONE).all() and (attempts == 1).all()
    saved = sigray.open(store).results().anomalies["cpu_utilization_asg_misconfiguration"]
    pd.testing.assert_frame_equal(saved, anomalies.reset_index(drop=True), check_dtype=False)
    # Prompt tokens as the engine counted them (the test double: a character a token), each window once.
    lengths = [len(prompt) for prompt in RunStore.open(store).read_prompts()]
    assert result.prompt_tokens_mean == pytest.approx(np.mean(lengths)) and result.prompt_tokens_max == max(lengths)
    tokens = sigray.open(store).status()["prompt_tokens"]
    assert tokens == {"mean": round(np.mean(lengths), 1), "max": max(lengths), "windows": 111}


def test_rerunning_a_finished_run_computes_nothing_and_returns_the_same_anomalies(ray_session, cpu_signal, tmp_path):
    store = str(tmp_path / "run")
    first = sigray.run([cpu_signal], store, **FAST)
    again = sigray.run([cpu_signal], store, **FAST)
    assert again.computed_windows == 0 and again.resumed_windows == 111
    name = "cpu_utilization_asg_misconfiguration"
    pd.testing.assert_frame_equal(first.anomalies[name], again.anomalies[name])


def test_a_pipeline_dict_runs_and_resumes_as_sigllms_own_pipeline_dicts_do(ray_session, cpu_signal, tmp_path):
    from sigray.pipelines.sigllm_pipeline import load_pipeline_spec

    spec = load_pipeline_spec("mistral_detector")
    spec["init_params"]["mlstars.custom.timeseries_preprocessing.rolling_window_sequences#1"]["window_size"] = 100
    store = str(tmp_path / "run")
    first = sigray.run([cpu_signal], store, pipeline=spec, **FAST)
    assert first.total_windows == 111 + 140 - 100  # a window of 100 steps, not sigllm's 140
    again = sigray.run([cpu_signal], store, pipeline=spec, **FAST)
    assert again.computed_windows == 0 and again.resumed_windows == first.total_windows
    for pipeline in (None, ["mistral_detector"]):
        with pytest.raises(sigray.ConfigError, match="pipeline=.*must be a sigllm pipeline name or JSON path"):
            sigray.run([cpu_signal], str(tmp_path / "other"), pipeline=pipeline, **FAST)
    with pytest.raises(sigray.ConfigError, match="a mapping with a list of 'primitives'"):
        sigray.run([cpu_signal], str(tmp_path / "other"), pipeline={}, **FAST)
    # The same pipeline as a file (a pathlib.Path): named otherwise, so the store says how to resume.
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(
        sigray.ConfigMismatchError, match=r"was made with the pipeline .custom.; this run names the same"
    ):
        sigray.run([cpu_signal], store, pipeline=path, **FAST)
    assert not os.path.exists(tmp_path / "other")


def test_malformed_answers_are_retried_then_failed_and_the_run_still_finishes(ray_session, cpu_signal, tmp_path):
    store = str(tmp_path / "run")
    result = sigray.run([cpu_signal], store, max_attempts=2, engine_options={"garbage_rate": 0.4}, **FAST)
    status, attempts = RunStore.open(store).read_state()
    failed = np.flatnonzero(status == FAILED)
    assert result.retries > 0 and len(failed) > 0 and result.failed_windows == len(failed)
    assert (attempts[failed] == 2).all()
    assert (attempts[status == DONE] >= 1).all() and (attempts <= 2).all()
    signal = result.signals["cpu_utilization_asg_misconfiguration"]
    assert sorted(signal.failed_windows) == failed.tolist()
    assert sigray.open(store).status()["failed"] == len(failed)


def test_the_same_settings_give_the_same_anomalies_with_any_number_of_workers(ray_session, cpu_signal, tmp_path):
    one = sigray.run([cpu_signal], str(tmp_path / "one"), workers=1, **FAST)
    two = sigray.run([cpu_signal], str(tmp_path / "two"), workers=2, **{**FAST, "batch_size": 5})
    name = "cpu_utilization_asg_misconfiguration"
    pd.testing.assert_frame_equal(one.anomalies[name], two.anomalies[name])
    a = RunStore.open(str(tmp_path / "one")).read_answers()
    b = RunStore.open(str(tmp_path / "two")).read_answers()
    assert (a == b).all()


def test_another_configuration_on_an_existing_store_is_refused_naming_the_difference(ray_session, cpu_signal, tmp_path):
    store = str(tmp_path / "run")
    sigray.run([cpu_signal], store, **FAST)
    before = RunStore.open(store).read_answers()
    with pytest.raises(sigray.ConfigMismatchError, match="seed: store has 0, this run has 5"):
        sigray.run([cpu_signal], store, seed=5, **FAST)
    with pytest.raises(sigray.ConfigMismatchError, match="window_size"):
        sigray.run(
            [cpu_signal],
            store,
            pipeline_params={
                "mlstars.custom.timeseries_preprocessing.rolling_window_sequences#1": {"window_size": 100}
            },
            **FAST,
        )
    assert (RunStore.open(store).read_answers() == before).all()


def test_speed_settings_may_change_between_resumes(ray_session, cpu_signal, tmp_path):
    store = str(tmp_path / "run")
    sigray.run([cpu_signal], store, **FAST)
    again = sigray.run([cpu_signal], store, **{**FAST, "batch_size": 3, "flush_interval_s": 2.0, "workers": 2})
    assert again.computed_windows == 0


def test_a_store_held_by_a_live_run_is_refused(ray_session, cpu_signal, tmp_path):
    from sigray import lease

    store = str(tmp_path / "run")
    sigray.run([cpu_signal], store, **FAST)
    lease.acquire(store, "someone-else", ttl_s=60, renew_every_s=1)  # held by this (live) process
    with pytest.raises(sigray.StoreLockedError, match="in use by another run"):
        sigray.run([cpu_signal], store, **FAST)


def test_a_sigkilled_worker_is_replaced_and_its_windows_are_requeued_uncharged(ray_session, cpu_signal, tmp_path):
    store, marker = str(tmp_path / "run"), str(tmp_path / "killed")
    options = {"sigkill_once_path": marker, "delay_s": 0.05}
    result = sigray.run([cpu_signal], store, workers=2, engine_options=options, **{**FAST, "batch_size": 4})
    assert os.path.exists(marker), "no worker was killed"
    assert result.workers_replaced >= 1 and result.requeued >= 1
    status, attempts = RunStore.open(store).read_state()
    assert (status == DONE).all() and (attempts == 1).all()
    reference = sigray.run([cpu_signal], str(tmp_path / "ref"), **FAST)
    name = "cpu_utilization_asg_misconfiguration"
    pd.testing.assert_frame_equal(result.anomalies[name], reference.anomalies[name])


def test_an_engine_can_be_plugged_in_by_import_path(ray_session, cpu_signal, tmp_path):
    plugged = {**FAST, "engine": "sigray.engines.test_double:TestDoubleEngine"}
    result = sigray.run([cpu_signal], str(tmp_path / "run"), **plugged)
    assert result.computed_windows == 111 and result.failed_windows == 0
    with pytest.raises(sigray.ConfigError, match="cannot import engine"):
        sigray.run([cpu_signal], str(tmp_path / "other"), **{**FAST, "engine": "no_such_module:Engine"})
