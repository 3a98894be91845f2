"""sigllm's other multivariate window formats (issue 18.6), each through a custom pipeline JSON:
value concatenation, the univariate control, value and digit interleave, each with its
validator; and the persistence control, a baseline without a model, explained.

A format's pipeline is sigllm's multivariate detector with its JSON format swapped for
another format's own ``format_as_string`` and ``format_as_integer`` blocks. Stock sigllm's
replay of the same answers is in ``test_fidelity_stock_sigllm.py``.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

import sigray
from sigray.config import RunConfig
from sigray.engines.test_double import TestDoubleEngine
from sigray.errors import ConfigError, InputError
from sigray.plan import make_plan
from sigray.store import DONE, RunStore
from sigray.worker import validate
from tests.conftest import nab_signal

DETECTOR = "multivariate_mistral_detector_jsonformat"
ROLLING = "mlstars.custom.timeseries_preprocessing.rolling_window_sequences#1"
FORMATS = ("value_concatenation", "univariate_control", "value_interleave", "digit_interleave")
FAST = {"engine": "test-double", "flush_interval_s": 0.5, "batch_size": 64, "chunk_windows": 256}


def reader(method: str) -> str:
    return f"sigllm.primitives.formatting.{method}.format_as_integer#1"


def format_pipeline(folder, method: str, reader_params: dict | None = None, writer: str | None = None) -> str:
    """sigllm's multivariate detector, windows written by ``writer`` (default: ``method``) and
    answers read by ``method``'s format, as a pipeline JSON file: what a user writes."""
    from sigray.pipelines.sigllm_pipeline import load_pipeline_spec

    spec = load_pipeline_spec(DETECTOR)
    swapped = {"format_as_string": writer or method, "format_as_integer": method}
    spec["primitives"] = [
        f"sigllm.primitives.formatting.{swapped[p.rsplit('.', 1)[1]]}.{p.rsplit('.', 1)[1]}"
        if p.startswith("sigllm.primitives.formatting.json_format")
        else p
        for p in spec["primitives"]
    ]
    for names in ("init_params", "input_names", "output_names"):
        block = spec[names].pop("sigllm.primitives.formatting.json_format.format_as_integer#1", None)
        if block is not None:
            spec[names][reader(method)] = block
    spec["init_params"][reader(method)] = {"trunc": 1, **(reader_params or {})}
    spec["init_params"][ROLLING]["window_size"] = 25
    path = folder / f"{method}-{writer or method}.json"
    path.write_text(json.dumps(spec))
    return str(path)


def params_of(method: str, channels: int = 55) -> dict:
    return {"num_dims": channels} if method == "value_concatenation" else {}


@pytest.fixture
def c1_head(tmp_path) -> str:
    """The first 800 rows (6-hour steps) of MSL's C-1: 55 channels, 776 windows of 25."""
    path = tmp_path / "C-1-head.csv"
    pd.read_csv(nab_signal("C-1")).head(800).to_csv(path, index=False)
    return str(path)


def _plan(path: str, signals: list[str]):
    return make_plan(RunConfig(store="unused", engine="test-double", pipeline=path), signals)


# -- each format's answers, as sigllm reads them ------------------------------------


@pytest.mark.parametrize(
    "method, asked, invalid",
    [
        # every channel's value per step: the first value is channel 0 of the next step
        ("value_concatenation", ",315", [("12 apples", "unparseable"), ("", "empty answer")]),
        ("univariate_control", ",315", [(",3a5", "unparseable"), ("", "empty answer")]),
        # 55 values of width 3 per step, side by side (value) or digit by digit (digit)
        ("value_interleave", "315" + "100" * 54, [("31x" + "0" * 162, "unparseable"), ("", "empty answer")]),
        ("digit_interleave", "3" + "1" * 54 + "1" + "0" * 54 + "5" + "0" * 54, [("", "empty answer")]),
    ],
)
def test_each_format_checks_answers_as_its_sigllm_reader_keeps_them(tmp_path, c1_head, method, asked, invalid):
    plan = _plan(format_pipeline(tmp_path, method, params_of(method)), [c1_head])
    answers, window = plan.answers, plan.plans[0].windows[0]
    max_digits, max_tokens = answers.limits(window)
    verdict = answers.check(asked, max_digits=max_digits)
    assert verdict.ok and verdict.values.tolist() == [315.0], verdict.reason
    assert re.fullmatch(answers.regex_for(max_digits), asked) and len(asked) <= max_tokens  # asked is what is read
    for text, reason in invalid:
        assert reason in answers.check(text, max_digits=max_digits).reason
    if answers.interleaved:
        assert max_digits == plan.plans[0].preprocessed.width_used == 3  # the signal's width, not one more
        step = window.rstrip(",").rsplit(",", 1)[-1]
        assert len(step) == 3 * 55 and answers.check(step, max_digits=max_digits).ok  # a step of the window reads
        assert not re.fullmatch(answers.regex_for(max_digits), asked[:-1])  # a step has exactly 3 x 55 digits
    else:
        assert answers.check(asked + ",100,7").values.tolist() == [315.0]  # sigllm reads on, keeps the first
        # cut at the token limit: valid only when the value kept provably ended
        assert answers.check(",315,1", cut=True).ok and not answers.check(",31", cut=True).ok


def test_value_concatenation_needs_the_signals_channel_count(tmp_path, c1_head):
    with pytest.raises(InputError, match=r"55 channel\(s\).*reads answers without num_dims set.*num_dims=55"):
        _plan(format_pipeline(tmp_path, "value_concatenation"), [c1_head])
    with pytest.raises(InputError, match="num_dims=55"):
        _plan(format_pipeline(tmp_path, "value_concatenation", {"num_dims": 25}), [c1_head])


@pytest.mark.parametrize(
    "method, writer, message",
    [
        ("value_interleave", "json_format", "writes its windows with json_format and reads answers with value_int"),
        ("value_concatenation", "digit_interleave", "the same format's format_as_string"),
    ],
)
def test_answers_read_in_another_format_than_the_windows_are_refused(tmp_path, c1_head, method, writer, message):
    with pytest.raises(ConfigError, match=message):
        _plan(format_pipeline(tmp_path, method, params_of(method), writer=writer), [c1_head])


def test_a_format_read_without_trunc_is_refused(tmp_path, c1_head):
    with pytest.raises(ConfigError, match=r"format_as_integer#1.trunc is None.*Set --param .*trunc=1"):
        _plan(format_pipeline(tmp_path, "value_interleave", {"trunc": None}), [c1_head])


@pytest.mark.parametrize("method", FORMATS)
def test_settings_a_format_cannot_be_checked_with_are_refused_before_any_store(tmp_path, c1_head, method):
    """trunc below 1 (stock: empty answers, then an OverflowError), another separator, or a reader
    scoring a channel other than the rolling window's target: each refused at planning."""
    cases = [
        ({"trunc": 0}, r"trunc=0: expected an integer >= 1"),
        ({"trunc": -2}, r"trunc=-2: expected an integer >= 1"),
        ({"separator": ";"}, r"separator=\";\": sigray checks .* default separator ','"),
        ({"target_column": 3}, r"forecasts one channel and compares it with another .*target_column=3"),
    ]
    for params, message in cases:
        with pytest.raises(ConfigError, match=message):
            _plan(format_pipeline(tmp_path, method, {**params_of(method), **params}), [c1_head])


def test_the_univariate_control_writes_and_reads_the_rolling_windows_target(tmp_path, c1_head):
    path = format_pipeline(tmp_path, "univariate_control")
    spec = json.loads(open(path).read())
    spec["init_params"]["sigllm.primitives.formatting.univariate_control.format_as_string#1"] = {"target_column": 2}
    open(path, "w").write(json.dumps(spec))
    with pytest.raises(ConfigError, match=r"format_as_string#1.target_column=2"):
        _plan(path, [c1_head])


def test_an_interleave_writers_digits_per_timestamp_is_used_as_sigllms_run_pipeline_uses_it(tmp_path, c1_head):
    """Stock MLBlocks gives it to the constructor, which format_as_string never reads (always 3)."""
    widths = {}
    for digits in (3, 6):
        path = format_pipeline(tmp_path, "digit_interleave")
        spec = json.loads(open(path).read())
        writer = "sigllm.primitives.formatting.digit_interleave.format_as_string#1"
        spec["init_params"][writer] = {"digits_per_timestamp": digits}
        open(path, "w").write(json.dumps(spec))
        plan = _plan(path, [c1_head]).plans[0]
        first_step = plan.windows[0].split(",")[0]
        widths[digits] = (plan.preprocessed.width_used, len(first_step) // 55)
    assert widths[6] == (6, 6) and widths[3][0] == widths[3][1] < 6


def test_the_persistence_control_is_explained_as_a_baseline_without_a_model(tmp_path, c1_head):
    after_llm = format_pipeline(tmp_path, "persistence_control")
    with pytest.raises(ConfigError, match="persistence_control is a baseline without a model.*run_pipeline"):
        _plan(after_llm, [c1_head])
    spec = json.loads(open(after_llm).read())
    spec["primitives"].remove("sigllm.primitives.forecasting.huggingface.HF")
    no_llm = tmp_path / "persistence.json"
    no_llm.write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="no sigllm LLM step.*persistence_control is a baseline"):
        _plan(str(no_llm), [c1_head])


# -- each format end to end: the test double's answers through sigllm's post-processing --


@pytest.mark.parametrize("method", FORMATS)
def test_each_format_post_processes_its_answers_with_sigllm(tmp_path, c1_head, method):
    run = make_plan(
        RunConfig(store="unused", engine="test-double", pipeline=format_pipeline(tmp_path, method, params_of(method))),
        [c1_head],
    )
    plan = run.plans[0]
    requests = plan.requests
    completions = TestDoubleEngine().generate(plan.prompts, run.samplings(plan), run.seeds(plan))
    kept, values, reasons, _ = validate(run.answers, completions, [r.max_digits for r in requests])
    assert not any(reasons), reasons[:3]
    detection = run.pipeline.postprocess(plan.preprocessed, kept)
    assert detection.failed_windows == [] and len(detection.forecast) == plan.n_windows
    assert np.isfinite(detection.forecast).all()
    if run.answers.interleaved:
        # The test double repeats a window's last step: sigllm's reader, given the signal's width,
        # reads back the target's last value of each window (the target before the window's
        # own), in the signal's units.
        context = plan.context
        last = np.asarray(context["y"], dtype=float).ravel()[:-1]
        np.testing.assert_allclose(values[1:, 0, 0], last)
        np.testing.assert_allclose(detection.forecast[1:], last * 10.0 ** -context["decimal"] + context["minimum"])


def test_a_run_in_another_format_resumes_and_checks_answers_on_the_workers(ray_session, tmp_path, c1_head):
    """Digit interleave: its workers check answers by each window's width (a real engine in test_vllm_run.py)."""
    path = format_pipeline(tmp_path, "digit_interleave")
    log = tmp_path / "generated.log"
    store = str(tmp_path / "run")
    settings = {**FAST, "pipeline": path, "batch_size": 2}
    stopped = sigray.run(
        [c1_head], store, deadline_s=6, engine_options={"delay_s": 1.0, "log_path": str(log)}, **settings
    )
    assert stopped.stopped and 0 < stopped.computed_windows < stopped.total_windows
    again = sigray.run([c1_head], store, engine_options={"log_path": str(log)}, **settings)
    assert again.complete and again.failed_windows == 0 and again.retries == 0
    prompts = log.read_text().split()[::2]
    assert len(prompts) == len(set(prompts)) == again.total_windows  # each window asked once
    status, _ = RunStore.open(store).read_state()
    assert (status == DONE).all()
    assert np.isfinite(again.signals["C-1-head"].forecast).all()
