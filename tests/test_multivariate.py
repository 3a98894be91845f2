"""Multivariate SigLLM (issue 18): Orion's multichannel signals through sigllm's two shipped
multivariate pipelines, checked before any engine starts, with every resume guarantee.

Fidelity with stock sigllm on whole NASA signals is in ``test_fidelity_stock_sigllm.py``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import sigray
from sigray.config import RunConfig
from sigray.errors import ConfigError, InputError
from sigray.plan import make_plan
from sigray.signals import load_signal
from sigray.store import DONE, RunStore
from tests.conftest import nab_signal

DETECTOR = "multivariate_mistral_detector_jsonformat"
PROMPTER = "mistral_prompter_multivariate_0shot"
ROLLING = "mlstars.custom.timeseries_preprocessing.rolling_window_sequences#1"
WINDOW_25 = {ROLLING: {"window_size": 25}}
JSON_INTEGER = "sigllm.primitives.formatting.json_format.format_as_integer#1"
FAST = {"engine": "test-double", "flush_interval_s": 0.5, "batch_size": 64, "chunk_windows": 256}


@pytest.fixture
def c1_head(tmp_path) -> str:
    """The first 800 rows (6-hour steps) of MSL's C-1: 55 channels, 776 windows of 25."""
    path = tmp_path / "C-1-head.csv"
    pd.read_csv(nab_signal("C-1")).head(800).to_csv(path, index=False)
    return str(path)


def _plan(signals, pipeline=DETECTOR, params=None, **kwargs):
    config = RunConfig(
        store="unused", engine="test-double", pipeline=pipeline, pipeline_params=WINDOW_25 if params is None else params
    )
    return make_plan(config, signals, **kwargs)


# -- input ------------------------------------------------------------------


def test_orion_multivariate_columns_make_a_multichannel_signal():
    signal = load_signal(nab_signal("C-1"))
    assert signal.channels == 55 and signal.values.shape == (4422, 55)
    frame = signal.frame()
    assert list(frame.columns) == ["timestamp"] + [str(k) for k in range(55)]
    # The identity covers every channel, and never equals the target channel's alone.
    alone = sigray.signals.signal_from_frame("C-1", frame[["timestamp", "0"]].rename(columns={"0": "value"}))
    assert alone.channels == 1 and alone.digest() != signal.digest()


def test_a_single_numbered_channel_is_a_univariate_signal():
    frame = pd.DataFrame({"timestamp": [0, 60, 120], "0": [1.0, 2.0, 3.0]})
    signal = sigray.signals.signal_from_frame("one", frame)
    same = sigray.signals.signal_from_frame("one", frame.rename(columns={"0": "value"}))
    assert signal.channels == 1 and signal.digest() == same.digest()


@pytest.mark.parametrize(
    "text, message",
    [
        ("timestamp,1,2\n0,1,2\n", r"missing channel\(s\) \['0'\]"),
        ("timestamp,0,2\n0,1,2\n", r"missing channel\(s\) \['1'\]"),
        ("timestamp,0,1,label\n0,1,2,x\n", r"columns \['label'\] are not channels"),
        ("timestamp,0,1\n0,1,2\n60,1,oops\n", r"'1' row 3 \('oops'\): not a number"),
        ("timestamp,0,1\n0,1,2\n60,,2\n", r"'0' row 3: NaN, empty or infinite"),
        ("time,0,1\n0,1,2\n", r"needs columns 'timestamp' and 'value' \(or, multichannel"),
        ("timestamp,value,1,2\n0,1,2,3\n", r"has a 'value' column and channel columns \['1', '2'\]"),
    ],
    ids=["no-target", "gap", "extra-column", "non-numeric-channel", "nan", "no-timestamp", "value-and-channels"],
)
def test_bad_multichannel_input_is_refused_naming_the_column_and_row(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_signal(str(path))


def test_a_univariate_pipeline_given_several_channels_is_refused_before_any_engine(c1_head):
    with pytest.raises(InputError, match=r"has 55 channels and pipeline 'mistral_detector' reads one.*multivariate_"):
        _plan([c1_head], pipeline="mistral_detector", params={})


def test_a_multivariate_pipeline_given_one_channel_runs_as_sigllm_does(cpu_signal):
    """sigllm accepts it (its JSON format writes d0 only): so does sigray."""
    plan = _plan([cpu_signal], params={ROLLING: {"window_size": 25}})
    assert plan.plans[0].prompts[0].startswith("d0:") and ",d1:" not in plan.plans[0].prompts[0]


def test_signals_with_different_channels_are_refused_in_one_run_but_not_in_a_benchmark(c1_head):
    a1 = nab_signal("A-1")
    with pytest.raises(InputError, match=r"'A-1' has 25 channel\(s\) and 'C-1-head' has 55.*sigray benchmark"):
        _plan([c1_head, a1])
    rejected: dict[str, str] = {}
    plan = _plan([c1_head, a1], rejected=rejected)  # a benchmark's signals are independent rows
    assert [p.signal.name for p in plan.plans] == ["C-1-head", "A-1"] and not rejected


def test_a_target_channel_the_signal_lacks_is_refused(c1_head):
    with pytest.raises(InputError, match="forecasts channel 60"):
        _plan(
            [c1_head], params={ROLLING: {"window_size": 25, "target_column": 60}, JSON_INTEGER: {"target_column": 60}}
        )


@pytest.mark.parametrize(
    "params, message",
    [({"trunc": None}, "needs trunc"), ({"steps_ahead": [1, 2]}, "no steps_ahead")],
    ids=["no-trunc", "steps-ahead"],
)
def test_json_reader_settings_sigllm_cannot_post_process_are_refused(c1_head, params, message):
    with pytest.raises(ConfigError, match=message):
        _plan([c1_head], params={**WINDOW_25, JSON_INTEGER: params})


# -- answers: what sigllm's JSON reader keeps ---------------------------------


def test_json_answers_are_checked_as_sigllm_reads_them(c1_head):
    plan = _plan([c1_head])
    answers, window = plan.answers, plan.plans[0].windows[0]
    max_digits, max_tokens = answers.limits(window)
    assert max_digits == 4  # widest value in the window is 3 digits ("314", "100")
    assert max_tokens == len(",d54:") + max_digits + 2  # one pair: the first d0 value is all sigllm keeps
    regex = answers.regex_for(max_digits)
    assert re.fullmatch(regex, ",d0:315") and not re.fullmatch(regex, ",d1:100")
    assert answers.check(",d0:315,d1:100,d2:100").values.tolist() == [315.0]
    assert answers.check("d0:7").ok  # sigllm reads pairs wherever they are
    assert answers.check(",d1:100,d2:100").reason == "0 value(s) of channel d0, expected 1"
    assert answers.check("").reason == "empty answer"
    # Cut at the token limit: valid only when the value kept provably ended.
    assert answers.check(",d0:315,d", cut=True).ok
    assert not answers.check(",d0:31", cut=True).ok


def test_the_multivariate_prompt_names_the_dimensions_and_asks_for_ranges(c1_head):
    plan = _plan([c1_head], pipeline=PROMPTER, params={})
    prompt = plan.plans[0].prompts[0]
    assert "multivariate time series of 55 dimensions" in prompt and prompt.endswith("[RESPONSE]")
    answers = plan.answers
    assert answers.check("[[3, 7], [20, 22]]").values.tolist() == [8.0]
    assert answers.check("no anomalies").values.tolist() == [0.0]
    assert "outside the window" in answers.check("[[3, 700]]").reason
    max_digits, _ = answers.limits(plan.plans[0].windows[0])
    assert re.fullmatch(answers.regex_for(max_digits), "[[3, 7], [20, 99]]")


# -- whole runs -----------------------------------------------------------------


@pytest.mark.parametrize("pipeline, params", [(DETECTOR, WINDOW_25), (PROMPTER, {})], ids=["detector", "prompter"])
def test_a_stopped_multivariate_run_resumes_without_asking_any_window_twice(
    ray_session, c1_head, tmp_path, pipeline, params
):
    log = tmp_path / "generated.log"
    settings = {**FAST, "pipeline": pipeline, "pipeline_params": params, "batch_size": 2}
    whole = sigray.run([c1_head], str(tmp_path / "whole"), **settings)
    store = str(tmp_path / "run")
    stopped = sigray.run(
        [c1_head], store, deadline_s=6, engine_options={"delay_s": 1.0, "log_path": str(log)}, **settings
    )
    assert stopped.stopped and 0 < stopped.computed_windows < stopped.total_windows
    again = sigray.run([c1_head], store, engine_options={"log_path": str(log)}, **settings)
    assert again.computed_windows == again.total_windows - stopped.computed_windows
    lines = log.read_text().split()
    prompts = lines[::2]
    assert len(prompts) == len(set(prompts)) == whole.total_windows  # each window asked once, none twice
    status, _ = RunStore.open(store).read_state()
    assert (status == DONE).all()
    name = "C-1-head"
    assert len(whole.anomalies[name]) > 0
    pd.testing.assert_frame_equal(again.anomalies[name], whole.anomalies[name])


def test_a_multichannel_store_gives_its_signal_back_as_it_was_given(ray_session, c1_head, tmp_path):
    store = str(tmp_path / "run")
    sigray.run([c1_head], store, pipeline=PROMPTER, **FAST)
    reader = sigray.open(store)
    back = reader.signal("C-1-head")
    given = pd.read_csv(c1_head)
    assert list(back.columns) == list(given.columns)
    np.testing.assert_array_equal(back.to_numpy(dtype=float), given.to_numpy(dtype=float))
    # detect re-runs post-processing from the store alone, every channel included.
    again = sigray.detect(
        store, pipeline_params={"sigllm.primitives.prompting.anomalies.find_anomalies_in_windows#1": {"alpha": 0.2}}
    )
    assert again.anomalies["C-1-head"] is not None and not again.missing


def test_prompts_no_engine_context_holds_are_refused_naming_the_window_size_that_fits(
    ray_must_not_start, c1_head, tmp_path
):
    """sigllm's defaults on MSL's 55 channels: prompts of about 60,000 characters (issue 18.4)."""
    store = str(tmp_path / "run")
    settings = {"engine": "test-double", "pipeline": DETECTOR, "engine_options": {"context_chars": 20_000}}
    with pytest.raises(
        ConfigError, match=r"shortest prompt has 5\d{4}.*window_size of about (\d+) would fit"
    ) as raised:
        sigray.run([c1_head], store, **settings)
    fitting = int(re.search(r"window_size=(\d+)", str(raised.value)).group(1))
    assert not (tmp_path / "run").exists()  # refused before anything was written
    plan = make_plan(
        RunConfig(store=store, pipeline_params={ROLLING: {"window_size": fitting}}, **settings), [nab_signal("C-1")]
    )
    assert max(len(p) for p in plan.plans[0].prompts) < 20_000  # the window named does fit


def test_a_multichannel_picture_draws_the_target_and_a_strip_of_the_other_channels(ray_session, c1_head, tmp_path):
    import matplotlib.image

    from sigray.plot import plot_from_store

    store = str(tmp_path / "run")
    sigray.run([c1_head], store, pipeline=DETECTOR, pipeline_params=WINDOW_25, **FAST)
    picture, finished = plot_from_store(store, str(tmp_path / "c1.png"))
    assert finished
    height, width, _ = matplotlib.image.imread(picture).shape
    assert (height, width) == (605, 1320)  # 12 x 5.5 inches at 110 dpi: the strip below the signal


def test_the_multivariate_demo_runs_the_bundled_nasa_excerpt_with_the_tutorial_window(ray_session, tmp_path):
    from sigray.demo import MULTIVARIATE_DEMO_SIGNAL, run_demo

    outcome = run_demo(str(tmp_path / "demo"), str(tmp_path / "demo.png"), pipeline=DETECTOR, **FAST)
    result = outcome.result
    assert list(result.signals) == [MULTIVARIATE_DEMO_SIGNAL]
    assert result.total_windows == 600 - 25  # 600 six-hour rows, windows of 25 steps
    assert RunStore.open(str(tmp_path / "demo")).config["pipeline_params"] == WINDOW_25
    assert outcome.picture and not outcome.picture_error
