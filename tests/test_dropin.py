"""``from sigray import SigLLM``: a notebook written for stock sigllm runs unchanged (issue 19.1)."""

from __future__ import annotations

import os

import pandas as pd
import pytest

import sigray
from sigray.dropin import DECIMAL_PRIMITIVE, INTERVAL_PRIMITIVE, WINDOW_SIZE_PRIMITIVE
from sigray.errors import ConfigError
from sigray.store import RunStore
from sigray.testing.stock_sigllm import StockEnvError, ensure_stock_env, read_stock_result, run_stock_pipeline
from tests.conftest import nab_signal

SIGNAL = "art_load_balancer_spikes"

# What a sigllm user writes (sigllm's README), word for word but for the import.
NOTEBOOK = """
from orion.data import load_signal
from sigray import SigLLM

data = load_signal(PATH)
sigllm = SigLLM('mistral_detector', interval=3600, decimal=2, window_size=140)
anomalies = sigllm.detect(data)
"""


@pytest.fixture
def cache(tmp_path, monkeypatch) -> str:
    """Where stores go, and the engine a notebook gets without naming one: the test double."""
    monkeypatch.setenv("SIGRAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SIGRAY_ENGINE", "test-double")
    return str(tmp_path / "cache")


def _notebook() -> dict:
    namespace = {"PATH": nab_signal(SIGNAL)}
    exec(compile(NOTEBOOK, "notebook", "exec"), namespace)  # noqa: S102 - the test's own script
    return namespace


@pytest.mark.slow
@pytest.mark.fidelity
def test_a_stock_sigllm_notebook_runs_unchanged_with_stock_sigllms_anomalies(ray_session, cache, tmp_path):
    try:
        stock_env = ensure_stock_env()
    except StockEnvError as exc:
        pytest.skip(f"stock sigllm environment cannot be built here (needs PyPI): {exc}")
    anomalies = _notebook()["anomalies"]
    assert list(anomalies.columns) == ["start", "end", "severity"] and len(anomalies) > 0

    # One store, named from the generation identity, under the cache.
    (store,) = [os.path.join(cache, name) for name in os.listdir(cache)]
    run = RunStore.open(store)
    (entry,) = run.signals
    answers = run.read_answers()[run.signal_rows(entry)].tolist()
    hyperparameters = {
        INTERVAL_PRIMITIVE: {"interval": 3600},
        DECIMAL_PRIMITIVE: {"decimal": 2},
        WINDOW_SIZE_PRIMITIVE: {"window_size": 140},
    }
    out = str(tmp_path / "stock.json")
    stock = run_stock_pipeline(
        stock_env, "mistral_detector", nab_signal(SIGNAL), answers, out, hyperparameters=hyperparameters
    )
    prompts = run.read_prompts()
    assert read_stock_result(out)["prompts"] == [prompts[r] for r in run.signal_rows(entry)]
    pd.testing.assert_frame_equal(anomalies, stock, check_dtype=False, check_exact=False, rtol=1e-9, atol=0)


def test_detect_again_on_the_same_data_computes_nothing(ray_session, cache):
    data = pd.read_csv(nab_signal(SIGNAL))
    model = sigray.SigLLM("mistral_detector", interval=3600)
    first = model.detect(data)
    assert model.last_result.computed_windows == model.last_result.total_windows > 0
    again = sigray.SigLLM("mistral_detector", interval=3600).detect(data)
    pd.testing.assert_frame_equal(first, again)
    # A detection setting only: the same store, every answer reused, a new result set.
    other = sigray.SigLLM(
        "mistral_detector",
        interval=3600,
        hyperparameters={"orion.primitives.timeseries_anomalies.find_anomalies#1": {"fixed_threshold": False}},
    )
    other.detect(data)
    assert other.last_result.computed_windows == 0 and len(os.listdir(cache)) == 1


def test_visualization_returns_the_events_and_sigllms_empty_outputs(ray_session, cache):
    data = pd.read_csv(nab_signal(SIGNAL))
    events, outputs = sigray.SigLLM("mistral_detector", interval=3600).detect(data, visualization=True)
    assert list(events.columns) == ["start", "end", "severity"] and outputs == {}


def test_a_model_named_in_the_hyperparameters_is_the_runs_model(ray_session, cache):
    hf = "sigllm.primitives.forecasting.huggingface.HF#1"
    model = sigray.SigLLM("mistral_detector", interval=3600, hyperparameters={hf: {"name": "my-org/my-model"}})
    model.detect(pd.read_csv(nab_signal(SIGNAL)))
    assert RunStore.open(model.last_result.store).identity["model"] == "my-org/my-model"


def test_a_pipeline_dict_is_taken_as_stock_takes_it(ray_session, cache):
    from sigray.pipelines.sigllm_pipeline import load_pipeline_spec

    events = sigray.SigLLM(load_pipeline_spec("mistral_detector"), interval=3600).detect(
        pd.read_csv(nab_signal(SIGNAL))
    )
    assert list(events.columns) == ["start", "end", "severity"]


def test_window_size_on_a_pipeline_without_that_block_is_a_clear_error(cache):
    """Stock sigllm sets it on ml-stars' rolling windows, which prompters lack: a KeyError deep in MLBlocks."""
    with pytest.raises(ConfigError, match=r"window_size= sets mlstars.*'sigllm.primitives.prompting.timeseries_pre"):
        sigray.SigLLM("mistral_prompter", window_size=50)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: sigray.SigLLM("mistral_detecor"), "Did you mean 'mistral_detector'"),
        (lambda: sigray.SigLLM(hyperparameters=[1, 2]), "hyperparameters must be a dict of blocks"),
        (lambda: sigray.SigLLM(interval="3600"), r"hyperparameters mlstars.*interval=\"3600\": expected an integer"),
    ],
    ids=["typo", "hyperparameters-list", "interval-text"],
)
def test_bad_arguments_are_refused_at_construction_as_stock_refuses_them(cache, make, message):
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize("data", [pd.Series([1.0]), "a.csv", [[0, 1.0]]], ids=["series", "path", "list"])
def test_data_that_is_no_dataframe_is_named(cache, data):
    with pytest.raises(sigray.InputError, match="data must be a pandas DataFrame"):
        sigray.SigLLM("mistral_detector").detect(data)


def test_dates_in_a_dataframe_are_read_as_their_unix_seconds(ray_session, cache):
    data = pd.read_csv(nab_signal(SIGNAL))
    dated = data.assign(timestamp=pd.to_datetime(data["timestamp"], unit="s"))
    model = sigray.SigLLM("mistral_detector", interval=3600)
    pd.testing.assert_frame_equal(model.detect(dated), model.detect(data))
    assert model.last_result.computed_windows == 0  # the same signal: the dates were its seconds


def test_an_unknown_sigray_setting_is_refused_at_once():
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['worker'\]"):
        sigray.SigLLM("mistral_detector", worker=2)


def _worker_actors() -> set[str]:
    import ray

    return {name for name in ray.util.list_named_actors() if name.startswith("sigray-worker-")}


def _until(condition, timeout_s: float = 60.0):
    """Wait for an asynchronous effect (an actor's end) to be seen, up to a bound."""
    import time

    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


def test_a_second_detect_serves_with_the_engines_already_loaded_and_close_frees_them(ray_session, cache):
    data = pd.read_csv(nab_signal(SIGNAL))
    assert _until(lambda: not _worker_actors())  # none left by earlier tests
    with sigray.SigLLM("mistral_detector", interval=3600) as model:
        model.detect(data)
        assert model.last_result.workers_reused == 0
        started = _worker_actors()
        assert len(started) == 1  # kept, engine loaded, after detect returned

        model.detect(data.assign(value=data["value"] * 2))  # other data: every window new
        assert model.last_result.computed_windows == model.last_result.total_windows > 0
        assert model.last_result.workers_reused == 1 and _worker_actors() == started

        other = sigray.SigLLM("mistral_detector", interval=3600)  # the process's engines serve every SigLLM
        other.detect(data.assign(value=data["value"] * 3))
        assert other.last_result.workers_reused == 1 and _worker_actors() == started
    assert _until(lambda: not _worker_actors())  # the block's end closed them

    model.detect(data)  # a closed SigLLM starts workers again when asked
    assert model.last_result.workers_reused == 0 and model.last_result.computed_windows == 0
    model.close()
    assert _until(lambda: not _worker_actors())


def test_plain_runs_keep_no_workers(ray_session, tmp_path):
    hourly = {INTERVAL_PRIMITIVE: {"interval": 3600}}
    sigray.run([nab_signal(SIGNAL)], str(tmp_path / "store"), engine="test-double", pipeline_params=hourly)
    assert _until(lambda: not _worker_actors())


def test_bad_rows_of_a_dataframe_are_named_by_its_index_labels(cache):
    data = pd.read_csv(nab_signal(SIGNAL))
    data.index = data.index + 1000
    data.loc[[1005, 1100, 3000], "value"] = float("nan")
    with pytest.raises(sigray.InputError, match=r"'value' rows 1005, 1100, 3000: NaN, empty or infinite"):
        sigray.SigLLM("mistral_detector").detect(data)


def test_a_too_short_signal_is_explained_in_python_terms(cache):
    data = pd.read_csv(nab_signal(SIGNAL)).iloc[:100]
    with pytest.raises(sigray.InputError, match=r"too short.*hyperparameters mlstars") as refused:
        sigray.SigLLM("mistral_detector").detect(data)
    assert "--param" not in str(refused.value)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_progress_is_true_or_false(value):
    with pytest.raises(ConfigError, match="progress must be True or False"):
        sigray.SigLLM("mistral_detector", progress=value)
    with pytest.raises(ConfigError, match="progress must be True or False"):
        sigray.run([], "unused", progress=value)


def test_workers_that_cannot_be_placed_are_named_and_a_stop_does_not_wait_for_them(
    ray_session, tmp_path, caplog, monkeypatch
):
    import sigray.runner

    monkeypatch.setattr(sigray.runner, "_PLACEMENT_WARNING_S", 1.0)
    hourly = {INTERVAL_PRIMITIVE: {"interval": 3600}}
    result = sigray.run(
        [nab_signal(SIGNAL)],
        str(tmp_path / "store"),
        engine="test-double",
        pipeline_params=hourly,
        cpus_per_worker=64,  # more than the cluster has: the worker waits for CPUs that never come
        deadline_s=8,
        progress=False,
    )
    assert result.stopped and result.computed_windows == 0
    assert "no worker could start" in caplog.text and "each needs 64 CPU(s)" in caplog.text
    assert _until(lambda: not _worker_actors())
