"""The OpenAI-compatible HTTP engine against a test double of a server (``tests/openai_stub.py``):
the engine contract, a prompt the server refuses, throttling and server errors retried, the
key kept out of the store, and bad settings refused before anything starts. Against a real
``vllm serve``: ``tests/test_openai_vllm_server.py`` (extended)."""

from __future__ import annotations

import os

import pytest

from sigray.cli import main
from sigray.config import RunConfig
from sigray.engines.base import Sampling
from sigray.engines.openai_engine import OpenAIEngine
from sigray.engines.test_double import TestDoubleEngine
from sigray.errors import ConfigError
from sigray.plan import make_plan
from sigray.store import DONE, RunStore
from tests.engine_contract import SERIES_PROMPTS, ClosingContract, EngineContract
from tests.openai_stub import OpenAIStubServer, run_through
from tests.processes import free_port

NAME = "cpu_utilization_asg_misconfiguration"


@pytest.fixture(scope="module")
def stub():
    with OpenAIStubServer() as server:
        yield server


class TestOpenAIEngineOnAStubServer(EngineContract, ClosingContract):
    """The engine contract, through HTTP."""

    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, stub):
        with OpenAIEngine("stub-model", base_url=stub.url) as engine:
            yield engine

    @pytest.fixture
    def make_engine(self, stub):
        return lambda: OpenAIEngine("stub-model", base_url=stub.url)


def test_a_prompt_the_server_refuses_is_refused_alone_and_the_others_are_answered():
    sampling = Sampling(n=2, max_tokens=16)
    with OpenAIStubServer(context_chars=20) as stub, OpenAIEngine("stub-model", base_url=stub.url) as engine:
        long = "1,2,3,4,5,6,7,8,9,10,11,12"
        completions = engine.generate([SERIES_PROMPTS[0], long, SERIES_PROMPTS[1]], [sampling] * 3, [1, 3, 5])
        alone = engine.generate([SERIES_PROMPTS[0], SERIES_PROMPTS[1]], [sampling] * 2, [1, 5])
    assert completions[1].permanent and "400" in completions[1].refused
    assert "maximum context length is 20" in completions[1].refused
    assert [completions[0], completions[2]] == alone


def test_throttling_and_server_errors_are_retried_and_the_answers_are_the_in_process_engines(
    ray_session, cpu_signal, tmp_path, monkeypatch
):
    """429 with Retry-After and random 500s: the run completes, every window answered once,
    with the answers the engine behind the server gives in process; the key reaches the server
    and nothing else."""
    secret = "sk-sigray-test-" + os.urandom(8).hex()
    monkeypatch.setenv("SIGRAY_TEST_API_KEY", secret)
    settings = {"batch_size": 16, "flush_interval_s": 0.5, "chunk_windows": 64, "max_attempts": 1}
    with OpenAIStubServer(throttle_first=20, error_rate=0.05, api_key=secret) as stub:
        options = {"base_url": stub.url, "api_key_env": "SIGRAY_TEST_API_KEY", "max_retries": 10}
        result = run_through(stub, cpu_signal, str(tmp_path / "http"), options, **settings)
    assert result.complete and stub.counts["throttled"] == 20 and stub.counts["errors"] > 0
    # each window asked once, the retries aside (the driver's format check came first, was throttled and
    # left to the run: throttling is not a bad setting)
    assert stub.counts["answered"] == result.total_windows
    status, attempts = RunStore.open(str(tmp_path / "http")).read_state()
    assert (status == DONE).all() and (attempts == 1).all()

    # The answers are the test-double engine's own for the same prompts, limits and seeds.
    config = RunConfig(store="unused", engine="openai", model="stub-model", engine_options=options, **settings)
    plan = make_plan(config, [cpu_signal])
    expected = TestDoubleEngine().generate(
        plan.plans[0].prompts, plan.samplings(plan.plans[0]), plan.seeds(plan.plans[0])
    )
    opened = RunStore.open(str(tmp_path / "http"))
    stored = opened.read_answers()[opened.signal_rows(opened.signal(NAME))]
    assert [list(row) for row in stored] == [c.texts for c in expected]
    for folder, _, files in os.walk(tmp_path / "http"):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                assert secret.encode() not in f.read(), name


def test_a_worker_whose_retries_run_out_is_replaced_and_the_run_completes(ray_session, cpu_signal, tmp_path):
    """A 500 with no retry left fails the worker's batch; the client's exception (which needs its
    request to be rebuilt) must reach the driver as an error it can read, not as a crash."""
    settings = {"batch_size": 2, "flush_interval_s": 0.5, "chunk_windows": 64, "max_attempts": 1}
    with OpenAIStubServer(error_rate=0.03, seed=3) as stub:
        result = run_through(stub, cpu_signal, str(tmp_path / "http"), {"max_retries": 0}, **settings)
    assert stub.counts["errors"] > 0 and result.workers_replaced > 0
    assert result.complete and result.failed_windows == 0
    status, attempts = RunStore.open(str(tmp_path / "http")).read_state()
    assert (status == DONE).all() and (attempts == 1).all()  # the lost batches went back uncharged


def test_bad_settings_are_refused_before_anything_starts(stub, cpu_signal, tmp_path, capsys, ray_must_not_start):
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    served = ["--engine-option", f"base_url={stub.url}"]
    cases = [
        (
            ["--model", "stub-model", "--engine-option", f"base_url={nowhere}"],
            "cannot reach the OpenAI-compatible server",
        ),
        (["--model", "mistral-7b", *served], "does not serve model 'mistral-7b'; it serves: stub-model"),
        (["--model", "stub-model"], "needs the server's address: --engine-option base_url="),
        (
            ["--model", "stub-model", *served, "--engine-option", "api_key_env=SIGRAY_NO_SUCH_VARIABLE"],
            "api_key_env names SIGRAY_NO_SUCH_VARIABLE, which is not set",
        ),
        (
            ["--model", "stub-model", *served, "--engine-option", "requests_per_s=0"],
            "requests_per_s must be a positive number, not 0",
        ),
        (
            ["--model", "stub-model", *served, "--engine-option", "tokens_per_min=-5"],
            "tokens_per_min must be a positive number, not -5",
        ),
        (served, "the openai engine needs --model: the name the server serves the model under"),
        (
            ["--model", "stub-model", *served, "--engine-option", "max_concurency=4"],
            "takes no option 'max_concurency' (did you mean max_concurrency?)",
        ),
        (["--model", "stub-model", *served, "--engine-option", "api_key=sk-1"], "(did you mean api_key_env"),
        (["--model", "stub-model", *served, "--engine-option", "max_concurrency=abc"], "'abc' must be int"),
    ]
    for options, message in cases:
        store = tmp_path / "never"
        assert main(["run", cpu_signal, "--store", str(store), "--engine", "openai", *options]) == 2
        assert message in capsys.readouterr().err
        assert not store.exists()


@pytest.mark.parametrize(
    ("server", "options", "message"),
    [
        ({"chat": False}, ["--pipeline", "gpt_detector"], "cannot take chat completions requests for model 'stub-"),
        ({"completions": False}, [], "cannot take completions requests for model 'stub-model': the server answered 40"),
        ({"structured_outputs": False}, [], "refuses the answer constraint (vLLM's structured_outputs)"),
    ],
)
def test_a_prompt_format_the_server_cannot_take_is_refused_before_anything_starts(
    cpu_signal, tmp_path, capsys, ray_must_not_start, server, options, message
):
    with OpenAIStubServer(**server) as stub:
        store = tmp_path / "never"
        args = ["run", cpu_signal, "--store", str(store), "--engine", "openai", "--model", "stub-model", *options]
        assert main([*args, "--engine-option", f"base_url={stub.url}"]) == 2
        assert message in capsys.readouterr().err
        assert not store.exists()
        unconstrained = Sampling(max_tokens=8)  # what --no-constrain asks
        if server == {"structured_outputs": False}:  # what the error advises works
            OpenAIEngine.check_requests("stub-model", {"base_url": stub.url}, unconstrained)


def test_the_served_models_name_is_the_identity_and_where_it_is_served_is_not(stub):
    one = RunConfig(
        store="s", engine="openai", model="m", engine_options={"base_url": "http://a/v1", "max_concurrency": 4}
    )
    other = one.replace(
        engine_options={"base_url": "http://b/v1", "api_key_env": "K", "timeout_s": 5, "requests_per_s": 2}
    )
    assert one.answer_settings() == other.answer_settings()
    assert one.answer_settings() != one.replace(model="m2").answer_settings()
    with pytest.raises(ConfigError):
        OpenAIEngine.check_ready("m", {"base_url": stub.url, "api_key_env": "SIGRAY_NO_SUCH_VARIABLE"})
