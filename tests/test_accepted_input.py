"""Where sigllm and Orion accept input, so does sigray (warning where the data is odd); what
sigllm would silently corrupt is refused before any engine starts, naming the way forward."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

import sigray
from sigray.cli import main as cli
from sigray.config import RunConfig
from sigray.errors import InputError, SigrayWarning
from sigray.evaluate import load_labels
from sigray.plan import make_plan
from sigray.signals import load_signal
from tests.conftest import FORMAT1, NAB, nab_signal

FLOAT2SCALAR = "sigllm.primitives.transformation.Float2Scalar#1"
HOURLY = {"mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1": {"interval": 3600}}


def _plan(sources, **settings):
    return make_plan(RunConfig(store="unused", engine="test-double", **settings), sources)


def _keys(plan) -> list[bytes]:
    return [r.key for r in plan.plans[0].requests]


def _csv(path, frame: pd.DataFrame) -> str:
    frame.to_csv(path, index=False)
    return str(path)


# -- accepted, as sigllm accepts them -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "odd_rows"),
    [
        ("machine_temperature_system_failure", "go back in time at row(s) 10151"),  # NAB's daylight-saving step
        (
            "ec2_request_latency_system_failure",
            "repeat at row(s) 559, 560, 561, 562, 563 and 6 more",
        ),  # a repeated hour
    ],
)
def test_nab_files_sigllm_runs_are_accepted_with_a_warning_naming_the_rows(name, odd_rows):
    with pytest.warns(SigrayWarning, match=odd_rows.replace("(", r"\(").replace(")", r"\)")):
        plan = _plan([nab_signal(name)], **({"pipeline_params": HOURLY} if name.startswith("ec2") else {}))
    assert plan.plans[0].n_windows > 0  # sigllm sorts and averages them: the same windows as stock


def test_repeated_timestamps_are_named_in_an_unsorted_file_too(tmp_path):
    frame = pd.read_csv(nab_signal("art_load_balancer_spikes"))
    shuffled = pd.concat([frame.iloc[2000:], frame.iloc[:2000], frame.iloc[10:11]])  # out of order, one row twice
    with pytest.warns(SigrayWarning) as caught:
        _plan([_csv(tmp_path / "odd.csv", shuffled)], pipeline_params=HOURLY)
    messages = " ".join(str(w.message) for w in caught)
    assert "go back in time at row(s) 2034" in messages and f"repeat at row(s) {len(frame) + 2}" in messages


def test_whole_second_signals_keep_the_digest_earlier_stores_recorded():
    """Accepting more (fractional seconds) changes how nothing already accepted is read."""
    with open(os.path.join(FORMAT1, "finished", "zarr.json")) as f:
        recorded = json.load(f)["attributes"]["sigray"]["identity"]["signals"]
    signal = load_signal(os.path.join(FORMAT1, "art_load_balancer_spikes.csv"))
    assert recorded == {"art_load_balancer_spikes": signal.digest()}
    assert signal.timestamps.dtype == np.int64


def test_fractional_seconds_dates_and_spaced_headers_are_read_as_sigllm_reads_them(tmp_path):
    frame = pd.read_csv(nab_signal("art_load_balancer_spikes"))
    plain = _plan([_csv(tmp_path / "plain.csv", frame)], pipeline_params=HOURLY)
    spaced = tmp_path / "spaced.csv"
    spaced.write_text("timestamp, value\n" + "".join(f"{t}, {v}\n" for t, v in zip(frame.timestamp, frame.value)))
    assert _keys(_plan([str(spaced)], pipeline_params=HOURLY)) == _keys(plain)
    dates = frame.assign(timestamp=pd.to_datetime(frame.timestamp, unit="s").dt.strftime("%Y-%m-%d %H:%M:%S"))
    assert _keys(_plan([_csv(tmp_path / "dates.csv", dates)], pipeline_params=HOURLY)) == _keys(plain)
    fractional = frame.assign(timestamp=frame.timestamp + 0.25)
    signal = load_signal(_csv(tmp_path / "fractional.csv", fractional))
    assert signal.timestamps.dtype == np.float64 and signal.timestamps[0] % 1 == 0.25
    assert _plan([str(tmp_path / "fractional.csv")], pipeline_params=HOURLY).plans[0].n_windows > 0


@pytest.mark.parametrize(("unit", "scale"), [("ms", 1_000), ("us", 1_000_000), ("ns", 1_000_000_000)])
def test_timestamps_that_are_not_seconds_are_named_and_read_with_their_unit(tmp_path, unit, scale, capsys):
    frame = pd.read_csv(nab_signal("art_load_balancer_spikes"))
    scaled = _csv(tmp_path / f"{unit}.csv", frame.assign(timestamp=frame.timestamp * scale))
    store = tmp_path / "store"
    assert cli(["run", scaled, "--store", str(store), "--engine", "test-double"]) == 2
    err = capsys.readouterr().err
    assert f"pass --timestamp-unit {unit}" in err and "after the year 2200" in err and "Traceback" not in err
    assert not store.exists()
    seconds = _plan([_csv(tmp_path / "s.csv", frame)], pipeline_params=HOURLY)
    assert _keys(_plan([scaled], pipeline_params=HOURLY, timestamp_unit=unit)) == _keys(seconds)


def test_a_signal_mostly_imputed_by_aggregation_is_named_before_any_engine_time(tmp_path):
    """Seconds, but a long silence: sigllm would impute most of its points without a word."""
    frame = pd.read_csv(nab_signal("art_load_balancer_spikes"))
    gap = frame.assign(timestamp=np.where(frame.index < 2000, frame.timestamp, frame.timestamp + 400 * 86400))
    with pytest.warns(SigrayWarning, match=r"signal 'gap': aggregating to 1 hour leaves [\d,]+ of [\d,]+ points empty"):
        _plan([("gap", gap)], pipeline_params=HOURLY)


def test_signals_of_the_same_file_name_are_named_apart_on_the_command_line(ray_session, tmp_path, capsys):
    frame = pd.read_csv(nab_signal("art_load_balancer_spikes"))
    for folder in ("smap", "msl"):
        (tmp_path / folder).mkdir()
        _csv(tmp_path / folder / "pump.csv", frame)
    store = str(tmp_path / "store")
    both = [str(tmp_path / "smap" / "pump.csv"), str(tmp_path / "msl" / "pump.csv")]
    hourly = ["--param", "mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1.interval=3600"]
    assert cli(["run", *both, "--store", store, "--engine", "test-double", *hourly]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    named = [f"smap_pump={both[0]}", f"msl_pump={both[1]}"]
    assert cli(["run", *named, "--store", store, "--engine", "test-double", "--quiet", *hourly]) == 0
    assert sigray.open(store).signal_names == ["smap_pump", "msl_pump"]


def test_a_file_url_names_a_local_store(ray_session, tmp_path):
    signal = nab_signal("art_load_balancer_spikes")
    result = sigray.run([signal], f"file://{tmp_path}/store", engine="test-double", pipeline_params=HOURLY)
    assert result.complete and sigray.open(str(tmp_path / "store")).results().complete


def test_labels_with_dates_read_as_the_same_events(tmp_path):
    seconds = pd.read_csv(f"{NAB}/anomalies_long.csv")
    as_dates = seconds.assign(
        start=pd.to_datetime(seconds.start, unit="s").astype(str), end=pd.to_datetime(seconds.end, unit="s").astype(str)
    )
    assert load_labels(_csv(tmp_path / "dates.csv", as_dates)) == load_labels(f"{NAB}/anomalies_long.csv")


# -- refused, before any engine starts ---------------------------------------------------


@pytest.mark.parametrize(
    ("values", "params", "message"),
    [
        (1e13, {"decimal": 7}, f"Use --param {FLOAT2SCALAR}.decimal=5 or less"),  # the case
        (1e17, {}, f"({FLOAT2SCALAR}.decimal=2, minus the minimum), past"),
        (-5e17, {"rescale": False}, f"Use --param {FLOAT2SCALAR}.decimal=1 or less"),
        (3e300, {}, "Rescale the signal first"),
    ],
)
def test_values_whose_scaled_integers_overflow_are_refused_naming_the_fix(tmp_path, values, params, message):
    frame = pd.read_csv(nab_signal("art_load_balancer_spikes"))
    frame.loc[100, "value"] = values
    settings = {"pipeline_params": {**HOURLY, **({FLOAT2SCALAR: params} if params else {})}}
    with pytest.raises(InputError) as refused:
        _plan([("big", frame)], **settings)
    assert "past int64's 9.22e+18: every prompt would be garbage" in str(refused.value)
    assert message in str(refused.value)


def test_a_too_short_signal_is_told_what_would_give_it_a_window():
    frame = pd.read_csv(nab_signal("art_load_balancer_spikes"))
    with pytest.raises(InputError) as refused:
        _plan([("short", frame)])
    message = str(refused.value)
    assert (
        "aggregated to 6 hours (mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1.interval=21600)"
        in message
    )
    assert "it has 56 point(s), and one window needs 141" in message
    assert "--param mlstars.custom.timeseries_preprocessing.rolling_window_sequences#1.window_size=<points>" in message


def test_a_store_made_with_other_settings_is_refused_with_a_one_line_summary_first(ray_session, tmp_path, capsys):
    signal, store = nab_signal("art_load_balancer_spikes"), str(tmp_path / "store")
    hourly = ["--param", "mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1.interval=3600"]
    assert cli(["run", signal, "--store", store, "--engine", "test-double", "--quiet", *hourly]) == 0
    changed = [
        "--seed",
        "4",
        "--max-attempts",
        "5",
        "--param",
        "sigllm.primitives.forecasting.huggingface.HF#1.steps=3",
    ]
    assert cli(["run", signal, "--store", store, "--engine", "test-double", *hourly, *changed]) == 2
    first, *rest = capsys.readouterr().err.splitlines()
    assert first.startswith(f"sigray: error: store {store} holds another run: 4 setting(s) that change answers differ")
    assert "(answers, generation_spec, max_attempts, seed)" in first
    assert "  seed: store has 0, this run has 4" in rest


def test_copying_a_store_keeps_it_usable(ray_session, tmp_path):
    """A store is self-contained: copied elsewhere (a laptop), it reads and post-processes alone."""
    signal = nab_signal("art_load_balancer_spikes")
    store = str(tmp_path / "store")
    sigray.run([signal], store, engine="test-double", pipeline_params=HOURLY)
    copy = str(tmp_path / "laptop" / "store")
    shutil.copytree(store, copy)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SigrayWarning)
        again = sigray.detect(
            copy, pipeline_params={"orion.primitives.timeseries_anomalies.find_anomalies#1": {"anomaly_padding": 5}}
        )
    assert again.computed_windows == 0 and again.complete
