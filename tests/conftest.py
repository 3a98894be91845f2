"""Shared fixtures: real signals, one local Ray cluster per session, store paths.

Ray gets its own short temp dir (unix socket paths must stay short) and is always
shut down at the end, so no Ray process outlives the test session.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The project's shared real signals: $SIGRAY_SHARED_DATA, else ../shared/data beside the checkout.
SHARED_DATA = os.environ.get("SIGRAY_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
NAB = os.path.join(SHARED_DATA, "nab_orion")
BUNDLED = os.path.join(ROOT, "sigray", "data")


def nab_signal(name: str) -> str:
    """Path of a real NAB signal in Orion format; skips when the shared data is absent."""
    path = os.path.join(NAB, f"{name}.csv")
    if not os.path.exists(path):
        pytest.skip(f"shared data {path} not present")
    return path


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


@pytest.fixture
def cpu_signal() -> str:
    """111 windows with mistral_detector and one true anomaly: small and meaningful."""
    return nab_signal("cpu_utilization_asg_misconfiguration")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random-weight Llama with its own tokenizer, built offline (< 1 s)."""
    from sigray.testing.tiny_model import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny-llama"))
