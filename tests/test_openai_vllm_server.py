"""The HTTP engine against a real OpenAI-compatible server: vLLM's own (the CPU build here),
serving the tiny model built offline, started by the test on 127.0.0.1 (~50 s to be ready).
The engine contract through it, a whole run, and the server SIGKILLed mid-run and restarted."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("vllm")

import sigray  # noqa: E402
from sigray.engines.openai_engine import OpenAIEngine  # noqa: E402
from sigray.store import DONE, RunStore  # noqa: E402
from sigray.testing.vllm_server import VllmServer  # noqa: E402
from tests.engine_contract import EngineContract  # noqa: E402
from tests.test_faults import BackgroundRun  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.extended]
SERVED = "tiny"
NAME = "cpu_utilization_asg_misconfiguration"


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    served = VllmServer(tiny_model, SERVED, str(tmp_path_factory.mktemp("vllm-server") / "server.log"))
    served.start()
    yield served
    served.kill()


def http_settings(server: VllmServer, **options) -> dict:
    return {
        "engine": "openai",
        "model": SERVED,
        "engine_options": {"base_url": server.url, **options},
        "batch_size": 8,
        "flush_interval_s": 0.5,
        "chunk_windows": 32,
    }


@pytest.fixture(scope="module")
def reference(ray_session, server, tmp_path_factory) -> str:
    """A whole run through the server, uninterrupted."""
    from tests.conftest import nab_signal

    store = str(tmp_path_factory.mktemp("http-reference") / "run")
    sigray.run([nab_signal(NAME)], store, **http_settings(server))
    return store


class TestOpenAIEngineOnVllmServe(EngineContract):
    """The engine contract, through vLLM's own server."""

    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, server):
        with OpenAIEngine(SERVED, base_url=server.url) as engine:
            yield engine


def test_a_run_through_vllm_serve_answers_every_window_within_the_constraint(reference):
    status, attempts = RunStore.open(reference).read_state()
    assert (status == DONE).all() and (attempts == 1).all()
    regex = re.compile(r",[0-9]{1,8}(,[0-9]{1,8}){4}")
    assert all(regex.fullmatch(str(a)) for a in RunStore.open(reference).read_answers()[:, 0])
    assert list(sigray.open(reference).results().anomalies[NAME].columns) == ["start", "end", "severity"]


def test_the_server_sigkilled_mid_run_and_restarted_loses_nothing(ray_session, server, reference, cpu_signal, tmp_path):
    """The client retries (with backoff) while the server restarts; a worker whose retries ran
    out is replaced and its windows go back uncharged. The answers equal the uninterrupted run's.

    Held to 20 requests a second (a provider's rate limit, as a user sets it): the tiny model
    answers up to 57 windows a second here, so all 111 could be saved before the kill."""
    store = str(tmp_path / "run")
    run = BackgroundRun(cpu_signal, store, **http_settings(server, max_retries=40, requests_per_s=20))
    run.wait_for_done(24)
    server.kill()
    status, _ = RunStore.open(store, read_only=True).read_state()
    assert (status == DONE).sum() < len(status), "the server was killed mid-run"
    server.start()
    result = run.result()
    assert result.complete
    status, attempts = RunStore.open(store).read_state()
    assert (status == DONE).all() and (attempts == 1).all()
    assert (RunStore.open(store).read_answers() == RunStore.open(reference).read_answers()).all()
