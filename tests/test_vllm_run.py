"""Whole runs with a real vLLM engine (CPU build here) on a tiny model built offline."""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pytest

import sigray

pytest.importorskip("vllm")

from sigray.errors import ConfigError  # noqa: E402
from sigray.store import DONE, FAILED, RunStore  # noqa: E402
from tests.processes import sigkill_mid_run_then_rerun

pytestmark = pytest.mark.vllm
NAME = "cpu_utilization_asg_misconfiguration"


def vllm_settings(model: str, **extra) -> dict:
    return {"engine": "vllm", "model": model, "batch_size": 8, "flush_interval_s": 1.0, "chunk_windows": 32, **extra}


@pytest.mark.extended  # the vLLM engine's refusals are tested in the default suite (test_vllm_engine.py)
def test_a_vllm_run_answers_every_window_within_the_constraint_or_fails_those_too_long_at_once(
    ray_session, tiny_model, cpu_signal, tmp_path
):
    """Also the engines issue's example: long values make some prompts of a second signal too
    long for ``max_model_len``; exactly those fail, at once, and everything else is answered."""
    from transformers import AutoTokenizer

    from sigray.config import RunConfig
    from sigray.plan import make_plan
    from tests.test_engine_refusals import spiky_signal

    store, context, spiky = str(tmp_path / "run"), 548, spiky_signal(tmp_path / "spiky.csv")
    settings = vllm_settings(tiny_model, engine_options={"max_model_len": context})
    result = sigray.run([cpu_signal, spiky], store, **settings)
    assert result.complete
    opened = RunStore.open(store)
    status, attempts = opened.read_state()
    cpu_rows, spiky_rows = (opened.signal_rows(opened.signal(name)) for name in (NAME, "spiky"))
    assert (status[cpu_rows] == DONE).all() and (attempts[cpu_rows] == 1).all()
    regex = re.compile(r",[0-9]{1,8}(,[0-9]{1,8}){4}")
    assert all(regex.fullmatch(str(a)) for a in opened.read_answers()[cpu_rows, 0])
    assert np.isfinite(opened.read_values()[cpu_rows]).all()
    assert list(result.anomalies[NAME].columns) == ["start", "end", "severity"]
    assert NAME in sigray.open(store).results().anomalies

    plan = make_plan(RunConfig(store="unused", model=tiny_model), [spiky])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompts, samplings = plan.plans[0].prompts, plan.samplings(plan.plans[0])
    refused = np.array([len(tokenizer.encode(p)) + s.max_tokens > context for p, s in zip(prompts, samplings)])
    assert 0 < refused.sum() < len(refused)
    status, attempts, reasons = status[spiky_rows], attempts[spiky_rows], opened.read_reasons()[spiky_rows]
    assert (status[refused] == FAILED).all() and (attempts[refused] == 1).all()
    assert all(f"{context}-token context" in r for r in reasons[refused])
    assert (status[~refused] == DONE).all()

    from sigray.testing.tiny_model import build_tiny_model

    other = build_tiny_model(str(tmp_path / "other-model"))
    with pytest.raises(sigray.ConfigMismatchError, match="model: store has"):
        sigray.run([cpu_signal, spiky], store, **vllm_settings(other, engine_options={"max_model_len": context}))


@pytest.mark.extended
def test_unconstrained_garbage_from_a_real_model_is_retried_then_failed(ray_session, tiny_model, cpu_signal, tmp_path):
    store = str(tmp_path / "run")
    result = sigray.run([cpu_signal], store, **vllm_settings(tiny_model, constrained=False, max_attempts=2))
    status, attempts = RunStore.open(store).read_state()
    assert np.count_nonzero(status == FAILED) > 0, "a random-weight model should not forecast digits unprompted"
    assert (attempts[status == FAILED] == 2).all()
    assert result.retries >= np.count_nonzero(status == FAILED)
    assert sorted(result.signals[NAME].failed_windows) == np.flatnonzero(status == FAILED).tolist()


@pytest.mark.extended
def test_a_vllm_run_killed_mid_way_resumes_to_the_uninterrupted_answers(ray_session, tiny_model, tmp_path, short_tmp):
    from tests.conftest import nab_signal

    # 1,175 windows in batches of 2: the tiny model on a kept-saturated engine answers about 100 a second here,
    # so the kill after the first flush with 30 done lands mid-run (111 windows were all done within one flush).
    name = "ambient_temperature_system_failure"
    signal = nab_signal(name)
    store = str(tmp_path / "run")
    command = ["run", signal, "--store", store, "--engine", "vllm", "--model", tiny_model, "--batch-size", "2"]
    command += ["--flush-interval", "1", "--chunk-windows", "256", "--num-cpus", "2"]
    ray_tmp = os.path.join(short_tmp, "vkill")

    done_at_kill, output, returncode = sigkill_mid_run_then_rerun(command, store, 30, ray_tmp)
    assert 30 <= len(done_at_kill) < RunStore.open(store).n_windows == 1175
    assert returncode == 0, output[-3000:]
    assert f"{len(done_at_kill)} reused" in output

    reference = str(tmp_path / "reference")
    sigray.run([signal], reference, **vllm_settings(tiny_model, chunk_windows=256))
    assert (RunStore.open(store).read_answers() == RunStore.open(reference).read_answers()).all()
    pd.testing.assert_frame_equal(
        sigray.open(store).results().anomalies[name], sigray.open(reference).results().anomalies[name]
    )


@pytest.mark.extended
@pytest.mark.parametrize("pipeline", ["mistral_prompter_0shot"])  # the other prompters' answers: fidelity tests
def test_a_vllm_prompter_run_stores_only_answers_sigllm_can_parse(
    ray_session, tiny_model, cpu_signal, tmp_path, pipeline
):
    from sigray.config import RunConfig
    from sigray.plan import make_plan

    store = str(tmp_path / "run")
    result = sigray.run([cpu_signal], store, pipeline=pipeline, **vllm_settings(tiny_model))
    status, attempts = RunStore.open(store).read_state()
    assert set(np.unique(status)) <= {DONE, FAILED} and (attempts >= 1).all()
    assert np.count_nonzero(status == DONE) > 0, "the constraint should make most answers well-formed"
    answer_format = make_plan(RunConfig(store=store, pipeline=pipeline), [cpu_signal]).answers
    for window in RunStore.open(store).read_answers()[status == DONE]:
        for text in window:
            assert answer_format.check(str(text)).ok
    assert list(result.anomalies[NAME].columns) == ["start", "end", "severity"]


def test_a_run_where_no_prompt_fits_max_model_len_is_refused_before_an_engine_loads(
    tiny_model, tmp_path, capsys, ray_must_not_start
):
    """Counted with the model's own tokenizer in the driver: exit 2, no store, no Ray, no engine.
    A max_model_len with room for one window lets the run go on (refusing the others itself)."""
    from sigray.cli import main
    from sigray.config import RunConfig
    from sigray.engines.vllm_engine import VllmEngine
    from sigray.plan import make_plan
    from tests.conftest import nab_signal

    signal, store = nab_signal("cpu_utilization_asg_misconfiguration"), tmp_path / "run"
    command = ["run", signal, "--store", str(store), "--engine", "vllm", "--model", tiny_model]
    for max_model_len in (64, 300):
        assert main([*command, "--engine-option", f"max_model_len={max_model_len}"]) == 2
        err = capsys.readouterr().err
        assert f"no window fits the model's {max_model_len}-token context (max_model_len)" in err, err
        assert "--engine-option max_model_len" in err and "Traceback" not in err
        assert not store.exists()

    plan = make_plan(RunConfig(store="unused", engine="vllm", model=tiny_model), [signal])
    requests = list(zip(plan.plans[0].prompts, plan.samplings(plan.plans[0])))
    tokens = re.search(r"shortest prompt has (\d+) tokens, before an answer of up to (\d+)", err)
    room = int(tokens[1]) + int(tokens[2])
    VllmEngine.check_fits(tiny_model, {"max_model_len": room}, requests)  # the shortest one fits: no error
    with pytest.raises(ConfigError, match=f"{room - 1}-token context"):
        VllmEngine.check_fits(tiny_model, {"max_model_len": room - 1}, requests)


@pytest.mark.extended
def test_multivariate_formats_on_a_real_vllm_engine_are_answered_within_their_constraints(
    ray_session, tiny_model, tmp_path
):
    """Issue 18 with a real engine: sigllm's JSON-format detector and two of its other formats
    (a pipeline JSON each) on the bundled NASA excerpt (5 channels), vLLM constrained by each
    format's regex: every window answered at its first attempt, and every stored answer what
    the format asks for. One engine serves the three runs (a worker pool, as a notebook's)."""
    from sigray.api import run_config, run_plan
    from sigray.demo import demo_signal
    from sigray.plan import make_plan
    from sigray.pool import WorkerPool
    from tests.test_multivariate_formats import format_pipeline, params_of

    name, frame = demo_signal(max_rows=150, multivariate=True)
    window_25 = {"mlstars.custom.timeseries_preprocessing.rolling_window_sequences#1": {"window_size": 25}}
    pipelines = {
        "json": ("multivariate_mistral_detector_jsonformat", window_25),
        "value_concatenation": (
            format_pipeline(tmp_path, "value_concatenation", params_of("value_concatenation", 5)),
            {},
        ),
        "digit_interleave": (format_pipeline(tmp_path, "digit_interleave"), {}),
    }
    pool = WorkerPool()
    try:
        for k, (label, (pipeline, params)) in enumerate(pipelines.items()):
            store = str(tmp_path / label)
            settings = vllm_settings(tiny_model, pipeline=pipeline, pipeline_params=params)
            plan = make_plan(run_config(store, settings), [(name, frame)])
            result = run_plan(plan, pool=pool)
            assert result.complete and result.failed_windows == 0 and result.retries == 0, label
            assert result.workers_reused == (1 if k else 0)
            opened = RunStore.open(store)
            status, attempts = opened.read_state()
            assert (status == DONE).all() and (attempts == 1).all()
            answers, requests = opened.read_answers()[:, 0], opened.read_requests()
            for answer, request in zip(answers, requests, strict=True):
                assert re.fullmatch(plan.answers.regex_for(request.max_digits), str(answer)), (label, answer)
                assert plan.answers.check(str(answer), max_digits=request.max_digits).ok
            assert np.isfinite(result.signals[name].forecast).all()
    finally:
        pool.close()
