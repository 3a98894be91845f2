"""Whole runs with a real vLLM engine (CPU build here) on a tiny model built offline."""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("vllm")

import sigray  # noqa: E402
from sigray.report import store_results  # noqa: E402
from sigray.store import DONE, FAILED, RunStore  # noqa: E402
from tests.processes import sigkill_mid_run_then_rerun

pytestmark = pytest.mark.vllm
NAME = "cpu_utilization_asg_misconfiguration"


def vllm_settings(model: str, **extra) -> dict:
    return {"engine": "vllm", "model": model, "batch_size": 8, "flush_interval_s": 1.0, "chunk_windows": 32, **extra}


def test_a_vllm_run_answers_every_window_within_the_constraint(ray_session, tiny_model, cpu_signal, tmp_path):
    store = str(tmp_path / "run")
    result = sigray.run([cpu_signal], store, **vllm_settings(tiny_model))
    status, attempts = RunStore.open(store).read_state()
    assert (status == DONE).all() and (attempts == 1).all()
    regex = re.compile(r",[0-9]{1,8}(,[0-9]{1,8}){4}")
    answers = RunStore.open(store).read_answers()[:, 0]
    assert all(regex.fullmatch(str(a)) for a in answers)
    assert np.isfinite(RunStore.open(store).read_values()).all()
    assert list(result.anomalies[NAME].columns) == ["start", "end", "severity"]
    assert NAME in store_results(store)

    from sigray.testing.tiny_model import build_tiny_model

    other = build_tiny_model(str(tmp_path / "other-model"))
    with pytest.raises(sigray.ConfigMismatchError, match="model: store has"):
        sigray.run([cpu_signal], store, **vllm_settings(other))


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

    signal = nab_signal("ambient_temperature_system_failure")  # 1,175 windows
    store = str(tmp_path / "run")
    command = ["run", signal, "--store", store, "--engine", "vllm", "--model", tiny_model, "--batch-size", "8"]
    command += ["--flush-interval", "1", "--chunk-windows", "256", "--num-cpus", "2"]
    ray_tmp = os.path.join(short_tmp, "vkill")

    done_at_kill, output, returncode = sigkill_mid_run_then_rerun(command, store, 200, ray_tmp)
    assert len(done_at_kill) < 1175
    assert returncode == 0, output[-3000:]
    assert f"{len(done_at_kill)} resumed from the store" in output

    reference = str(tmp_path / "reference")
    sigray.run([signal], reference, **vllm_settings(tiny_model, chunk_windows=256))
    assert (RunStore.open(store).read_answers() == RunStore.open(reference).read_answers()).all()
    name = "ambient_temperature_system_failure"
    pd.testing.assert_frame_equal(store_results(store)[name], store_results(reference)[name])


@pytest.mark.parametrize("pipeline", ["mistral_prompter", "mistral_prompter_0shot"])
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
