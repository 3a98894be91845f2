"""sigray's anomalies equal STOCK sigllm's on the same LLM answers.

Stock sigllm runs in its own pinned environment (numpy<2, pandas<2; built once by
``ensure_stock_env``), exactly as ``SigLLM(pipeline).detect(load_signal(csv))``, with its
LLM block replaced by a replay of the answers sigray stored. Equal anomalies then mean
that sigray's split pipeline, its numpy 2 / pandas 2 stack, its window bookkeeping across
signals and its store change nothing sigllm computes.
"""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

import sigray
from sigray.config import RunConfig
from sigray.engines.test_double import TestDoubleEngine
from sigray.plan import make_plan
from sigray.store import DONE, RunStore
from sigray.testing.stock_sigllm import (
    StockEnvError,
    StockRunError,
    ensure_stock_env,
    installed_versions,
    read_stock_result,
    run_stock_pipeline,
)
from tests.conftest import nab_signal

pytestmark = [pytest.mark.slow, pytest.mark.fidelity]

FAST = {"engine": "test-double", "flush_interval_s": 0.5, "batch_size": 64, "chunk_windows": 256}
HOURLY = {"mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1": {"interval": 3600}}
WINDOW_25 = {"mlstars.custom.timeseries_preprocessing.rolling_window_sequences#1": {"window_size": 25}}
DYNAMIC_THRESHOLD = {"orion.primitives.timeseries_anomalies.find_anomalies#1": {"fixed_threshold": False}}

NORMAL = "art_daily_no_noise"  # the one-shot prompter's normal reference

# case: (pipeline, signals run together in one store, pipeline parameters, anomalies the
# test double leads to per signal)
CASES = {
    # Three signals in one store: answers are read back through each signal's rows.
    # machine_temperature steps back an hour (daylight saving in NAB's local times): sigllm
    # sorts it, and so does sigray, by passing it on as it is.
    "mistral_detector-cpu+nyc_taxi+machine_temperature": (
        "mistral_detector",
        ["cpu_utilization_asg_misconfiguration", "nyc_taxi", "machine_temperature_system_failure"],
        {},
        {1, 0},
    ),
    # 1175 windows, Orion's dynamic threshold (its fmin search) instead of the fixed one.
    "mistral_detector-dynamic-ambient": (
        "mistral_detector",
        ["ambient_temperature_system_failure"],
        DYNAMIC_THRESHOLD,
        {2},
    ),
    # A parameter override reaches stock sigllm as SigLLM(hyperparameters=...).
    # ec2_request_latency repeats timestamps: sigllm's aggregation averages them, so does sigray's.
    "mistral_detector-hourly-art_load_balancer+ec2_latency": (
        "mistral_detector",
        ["art_load_balancer_spikes", "ec2_request_latency_system_failure"],
        HOURLY,
        {1, 2},
    ),
    "mistral_detector_kmeans-nyc_taxi": ("mistral_detector_kmeans", ["nyc_taxi"], {}, {2}),
    # A chat prompt (OpenAI's chat API in stock), digits written one by one (space=True).
    "gpt_detector-cpu": ("gpt_detector", ["cpu_utilization_asg_misconfiguration"], {}, {1}),
    # Bare numbers (restrict_tokens), 10 samples voted on per window.
    "mistral_prompter-nyc_taxi+ambient": (
        "mistral_prompter",
        ["nyc_taxi", "ambient_temperature_system_failure"],
        {},
        {1, 4},
    ),
    # Free text after [RESPONSE], parsed by parse_anomaly_response.
    "mistral_prompter_0shot-cpu+nyc_taxi": (
        "mistral_prompter_0shot",
        ["cpu_utilization_asg_misconfiguration", "nyc_taxi"],
        {},
        {1},
    ),
    # The normal reference signal goes into every prompt.
    "mistral_prompter_1shot-nyc_taxi": ("mistral_prompter_1shot", ["nyc_taxi"], {}, {2}),
    "gpt_prompter-ambient": ("gpt_prompter", ["ambient_temperature_system_failure"], {}, {4}),
    # Multivariate (issue 18), NASA telemetry with every channel: windows of d0:v,d1:v,... (JSON
    # format), channel 0 forecast; window_size 25 as sigllm's multivariate tutorial.
    "multivariate_detector-C-1": ("multivariate_mistral_detector_jsonformat", ["C-1"], WINDOW_25, {6}),
    "multivariate_detector-A-1": ("multivariate_mistral_detector_jsonformat", ["A-1"], WINDOW_25, {1}),
    # The multivariate prompt (dimensions, examples) and index ranges parsed with interval=True.
    "multivariate_prompter-C-1": ("mistral_prompter_multivariate_0shot", ["C-1"], {}, {12}),
    "multivariate_prompter-A-1": ("mistral_prompter_multivariate_0shot", ["A-1"], {}, {1}),
}


@pytest.fixture(scope="module")
def stock_env() -> str:
    """The stock sigllm venv (built on first use, minutes; then reused)."""
    try:
        return ensure_stock_env()
    except StockEnvError as exc:
        pytest.skip(f"stock sigllm environment cannot be built here (needs PyPI): {exc}")


def test_the_stock_env_has_sigllm_on_its_own_pins(stock_env):
    versions = installed_versions(stock_env)
    assert versions["sigllm"] == "0.2.0" and versions["orion-ml"] == "0.7.1"
    assert versions["numpy"].startswith("1.") and versions["pandas"].startswith("1.")
    assert not {"torch", "tensorflow", "transformers"} & set(versions)


# Extended: Orion's fmin search takes ~40 s whatever the signal; A-1's 11,496 JSON windows ~40 s (C-1's stay).
SLOW = {"mistral_detector-dynamic-ambient", "multivariate_detector-A-1"}


@pytest.mark.parametrize(
    "case", [pytest.param(case, marks=pytest.mark.extended) if case in SLOW else case for case in CASES]
)
def test_sigray_anomalies_equal_stock_sigllm_anomalies_on_the_same_answers(ray_session, stock_env, tmp_path, case):
    pipeline, names, params, expected_counts = CASES[case]
    paths = {name: nab_signal(name) for name in names}
    normal = nab_signal(NORMAL) if pipeline.endswith("1shot") else None
    store_path = str(tmp_path / "run")
    result = sigray.run(
        list(paths.values()), store_path, pipeline=pipeline, pipeline_params=params, normal=normal, **FAST
    )
    store = RunStore.open(store_path)
    status, _ = store.read_state()
    assert (status == DONE).all(), "every window must have an answer for stock sigllm to replay"
    answers, prompts = store.read_answers(), store.read_prompts()

    counts = set()
    for signal in store.signals:
        rows = store.signal_rows(signal)  # the store row of each of the signal's windows, in order
        out = str(tmp_path / f"{signal.name}.stock.json")
        stock = run_stock_pipeline(
            stock_env,
            pipeline,
            paths[signal.name],
            answers[rows].tolist(),
            out,
            hyperparameters=params,
            normal_csv=normal,
        )
        replay = read_stock_result(out)
        # Stock sigllm sent its model the very prompts sigray stored, once per window (one pass).
        assert len(replay["prompts"]) == signal.n_windows > 0
        assert replay["prompts"] == [prompts[r] for r in rows], f"{signal.name}: stock prompts differ"
        assert replay["llm_calls"] == 1
        ours = result.anomalies[signal.name].reset_index(drop=True)
        pd.testing.assert_frame_equal(ours, stock, check_dtype=False, check_exact=False, rtol=1e-9, atol=0)
        counts.add(len(stock))
    assert counts == expected_counts  # the comparison covered real anomalies, not only empty frames


def test_an_empty_answer_crashes_stock_sigllm_but_sigray_fails_only_that_window(stock_env, cpu_signal, tmp_path):
    run = make_plan(RunConfig(store="unused", engine="test-double"), [cpu_signal])
    pipeline, plan, answer_format = run.pipeline, run.plans[0], run.answers
    answers = [c.texts for c in TestDoubleEngine().generate(plan.prompts, run.samplings(plan), run.seeds(plan))]
    bad = 40
    answers[bad] = [""]

    # Stock sigllm: format_as_integer turns "" into an empty array, the answers stop being
    # a 3-D block and aggregate_rolling_window's shape unpacking fails; the whole signal is lost.
    with pytest.raises(StockRunError) as raised:
        run_stock_pipeline(stock_env, "mistral_detector", cpu_signal, answers, str(tmp_path / "stock.json"))
    assert raised.value.exc_type == "ValueError"
    assert raised.value.exc_message == "not enough values to unpack (expected 3, got 2)"
    assert "aggregate_rolling_window" in raised.value.stock_traceback

    # sigray: the worker's check rejects the answer (so it is retried), and a window that
    # never gets a valid answer is dropped with its target; the signal still finishes.
    assert answer_format.check("").reason == "empty answer"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detection = pipeline.postprocess(plan.preprocessed, [None if w == bad else a for w, a in enumerate(answers)])
    assert detection.failed_windows == [bad]
    assert list(detection.anomalies.columns) == ["start", "end", "severity"]


def test_an_answer_without_the_target_channel_crashes_stock_sigllm_but_sigray_fails_only_that_window(
    stock_env, tmp_path
):
    c1 = nab_signal("C-1")
    config = RunConfig(
        store="unused",
        engine="test-double",
        pipeline="multivariate_mistral_detector_jsonformat",
        pipeline_params=WINDOW_25,
    )
    run = make_plan(config, [c1])
    pipeline, plan, answer_format = run.pipeline, run.plans[0], run.answers
    answers = [c.texts for c in TestDoubleEngine().generate(plan.prompts, run.samplings(plan), run.seeds(plan))]
    bad = 40
    answers[bad] = [",d1:100,d2:100"]  # pairs, but none of channel d0, the one forecast

    # Stock sigllm: format_as_integer leaves None where d0 was missing; Scalar2Float cannot add to it.
    with pytest.raises(StockRunError) as raised:
        run_stock_pipeline(
            stock_env, config.pipeline, c1, answers, str(tmp_path / "stock.json"), hyperparameters=WINDOW_25
        )
    assert raised.value.exc_type == "TypeError"
    assert "NoneType" in raised.value.exc_message and "transformation.py" in raised.value.stock_traceback

    # sigray: the worker's check rejects it (retried, then failed), and the signal still finishes.
    assert answer_format.check(answers[bad][0]).reason == "0 value(s) of channel d0, expected 1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detection = pipeline.postprocess(plan.preprocessed, [None if w == bad else a for w, a in enumerate(answers)])
    assert detection.failed_windows == [bad]
    assert len(detection.anomalies) > 0


# sigllm's other multivariate formats (issue 18.6) in a pipeline JSON. Stock keeps every value
# of an answer in these formats (MLBlocks gives trunc to the reader's constructor, which never
# reads it) and loses the interleave formats' width between their two blocks; sigray reads
# them as sigllm's own run_pipeline does (sigray.pipelines.format_methods).
FORMAT_CASES = {
    # Answers of the target's forecast then two other channels' values: one target value, as stock keeps.
    "value_concatenation": ("equal", None),
    # Several values of the target alone: stock keeps them all, and answers of different lengths crash it.
    "univariate_control": ("ValueError", "not enough values to unpack"),
    "value_interleave": ("KeyError", "width_used"),
    "digit_interleave": ("KeyError", "width_used"),
}


@pytest.mark.parametrize("method", FORMAT_CASES)
def test_other_multivariate_formats_against_stock_sigllm_on_the_same_answers(stock_env, tmp_path, method):
    from tests.test_multivariate_formats import format_pipeline, params_of

    head = tmp_path / "C-1-head.csv"
    pd.read_csv(nab_signal("C-1")).head(800).to_csv(head, index=False)

    def planned(method: str):
        path = format_pipeline(tmp_path, method, params_of(method))
        run = make_plan(RunConfig(store="unused", engine="test-double", pipeline=path), [str(head)])
        plan = run.plans[0]
        answers = [c.texts for c in TestDoubleEngine().generate(plan.prompts, run.samplings(plan), run.seeds(plan))]
        return path, run, plan, answers

    def first_values(answers, after: str = "") -> list[list[str]]:
        return [["," + text.lstrip(",").split(",")[0] + after] for (text,) in answers]

    path, run, plan, answers = planned(method)
    if method == "value_concatenation":  # the test double forecasts the target from its own values only
        answers = first_values(planned("univariate_control")[3], after=",0,1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = run.pipeline.postprocess(plan.preprocessed, answers).anomalies.reset_index(drop=True)
    outcome, message = FORMAT_CASES[method]
    if outcome == "equal":
        stock = run_stock_pipeline(stock_env, path, str(head), answers, str(tmp_path / "stock.json"))
        pd.testing.assert_frame_equal(ours, stock, check_dtype=False, check_exact=False, rtol=1e-9, atol=0)
        assert len(stock) > 0  # the comparison covered real anomalies
        return
    with pytest.raises(StockRunError) as raised:
        run_stock_pipeline(stock_env, path, str(head), answers, str(tmp_path / "stock.json"))
    assert raised.value.exc_type == outcome and message in raised.value.exc_message
    if method == "univariate_control":  # given only the value sigray keeps of each answer, stock agrees
        stock = run_stock_pipeline(stock_env, path, str(head), first_values(answers), str(tmp_path / "first.json"))
        pd.testing.assert_frame_equal(ours, stock, check_dtype=False, check_exact=False, rtol=1e-9, atol=0)
        assert len(stock) > 0
