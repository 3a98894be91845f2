"""Scoring against labels with Orion's contextual metrics, and the error-units fix they judge."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import sigray
from sigray.cli import main as cli
from sigray.config import RunConfig
from sigray.engines.test_double import TestDoubleEngine
from sigray.errors import ConfigError, InputError
from sigray.evaluate import evaluate, load_labels
from sigray.pipelines.sigllm_pipeline import SigllmPipeline
from sigray.plan import make_plan
from tests.conftest import NAB


def test_both_orion_label_formats_read_the_same_events():
    short, long = load_labels(f"{NAB}/anomalies.csv"), load_labels(f"{NAB}/anomalies_long.csv")
    shared = set(short) & set(long)
    assert len(shared) >= 10
    assert all(short[name] == long[name] for name in shared)
    assert short["art_daily_no_noise"] == []


def test_a_labels_file_in_another_format_is_refused_with_its_columns(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("name,when\nnyc_taxi,1\n")
    with pytest.raises(InputError, match=r"columns \['name', 'when'\]; expected Orion's signal,events"):
        load_labels(str(path))
    path.write_text('signal,events\nnyc_taxi,"[[1, 2, 3]]"\n')
    with pytest.raises(InputError, match="events of 'nyc_taxi' are not"):
        load_labels(str(path))
    with pytest.raises(InputError, match="does not exist"):
        load_labels(str(tmp_path / "missing.csv"))


def test_scores_are_orions_contextual_metrics_summed_over_signals():
    labels = {"a": [(100, 200)], "b": [(1000, 1100), (5000, 5100)], "c": []}
    detected = {
        "a": pd.DataFrame({"start": [100], "end": [200]}),  # exact
        "b": pd.DataFrame({"start": [1050, 9000], "end": [1060, 9100]}),  # one of two, plus a false one
        "c": pd.DataFrame({"start": [], "end": []}),
        "unlabelled": pd.DataFrame({"start": [1], "end": [2]}),
    }
    scores = evaluate(detected, labels).set_index(["signal", "method"])
    assert set(scores.index.get_level_values("signal")) == {"a", "b", "c", "ALL"}
    assert scores.loc[("a", "overlap"), "f1"] == 1.0 and scores.loc[("a", "weighted"), "f1"] == 1.0
    overall = scores.loc[("ALL", "overlap")]
    assert (overall.tp, overall.fp, overall.fn) == (2, 1, 1)
    assert overall.precision == pytest.approx(2 / 3) and overall.recall == pytest.approx(2 / 3)
    with pytest.raises(InputError, match="no signal of the run"):
        evaluate({"x": detected["a"]}, labels)


def test_sigray_evaluate_scores_a_finished_run(ray_session, cpu_signal, tmp_path, capsys):
    store = str(tmp_path / "run")
    sigray.run([cpu_signal], store, engine="test-double", flush_interval_s=0.5)
    assert cli(["evaluate", store, "--labels", f"{NAB}/anomalies.csv"]) == 0
    table = capsys.readouterr().out
    assert "cpu_utilization_asg_misconfiguration" in table and "ALL" in table and "weighted" in table


def _errors_context(fix_units: bool, signal_csv: str) -> dict:
    """The MLBlocks context right after sigllm's regression_errors, on test-double answers."""
    run = make_plan(RunConfig(store="unused", engine="test-double", fix_error_units=fix_units), [signal_csv])
    pipeline, plan = run.pipeline, run.plans[0]
    answers = [c.texts for c in TestDoubleEngine().generate(plan.prompts, run.samplings(plan), run.seeds(plan))]
    built = pipeline._build()
    built.blocks[pipeline.llm_block].instance.answers = answers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return built.fit(
            start_=pipeline.llm_block, output_="orion.primitives.timeseries_errors.regression_errors#1", **plan.context
        )


def test_the_error_units_fix_compares_targets_and_forecasts_in_the_same_units(cpu_signal):
    faithful = _errors_context(False, cpu_signal)
    fixed = _errors_context(True, cpu_signal)
    # sigllm 0.2.0: targets in Float2Scalar's integer units (x100 here), forecasts in original units.
    assert np.median(faithful["y"]) / np.median(faithful["y_hat"]) > 50
    ratio = np.median(fixed["y"]) / np.median(fixed["y_hat"])
    assert 0.8 < ratio < 1.25
    np.testing.assert_allclose(fixed["y_hat"], faithful["y_hat"])  # the forecasts themselves are untouched


def test_the_error_units_fix_is_refused_where_there_is_nothing_to_fix():
    with pytest.raises(ConfigError, match="mistral_detector_kmeans"):
        SigllmPipeline("mistral_detector_kmeans", fix_units=True)
    with pytest.raises(ConfigError, match="mistral_prompter"):
        SigllmPipeline("mistral_prompter", fix_units=True)
