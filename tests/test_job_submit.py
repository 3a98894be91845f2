"""`ray job submit` a `sigray run` to a real Ray head with token auth, `ray job stop` it mid-run, resubmit: it resumes.

The head is a real `ray start --head --block` process with its own temp dir, its own ports and its own
token (RAY_AUTH_MODE=token), so it never meets another Ray cluster on this machine. It is ended by
signalling that process (it stops what it started), never with `ray stop`, which stops every Ray process
on the machine, other users' test clusters included. About 80 s for the module on 2 cores.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

import sigray
from sigray.engines.test_double import _digest
from sigray.store import DONE, RunStore
from tests.conftest import ROOT, nab_signal
from tests.processes import reap_orphans, wait_until_no_writer

pytestmark = [pytest.mark.slow, pytest.mark.extended]

SIGNAL = "cpu_utilization_asg_misconfiguration"  # 111 windows
BATCH, DELAY_S, FLUSH_S = 8, 1.0, 1.0
STOP_AFTER = 16  # windows done in the store before `ray job stop`
# `ray job stop` sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (3 s by default), which the job
# supervisor reads from the job's env_vars: room for sigray to let batches in flight finish and flush.
RUNTIME_ENV = json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "30"}})
BIN = os.path.dirname(sys.executable)
RAY = os.path.join(BIN, "ray")


@dataclass
class RayHead:
    """A running head: where to submit jobs, and the environment a client needs (token included)."""

    address: str  # the jobs API (dashboard), for `ray job ...`
    gcs_address: str  # for drivers that connect with ray.init
    client_env: dict[str, str]
    ray_tmp: str
    process: subprocess.Popen
    log_path: str

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`ray <args>` as a client of this head (token in the environment)."""
        return subprocess.run(
            [RAY, *args], env=self.client_env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def job(self, verb: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.ray("job", verb, "--address", self.address, *args, timeout=timeout)


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive ports that are free now, below Linux's ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(s)
                s.bind(("", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no block of {count} free ports found")


def _head_env(ray_tmp: str, token_path: str, metric_ports: tuple[int, int]) -> dict[str, str]:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(name, None)  # the pytest process may have its own in-process cluster
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=token_path,
        RAY_USAGE_STATS_ENABLED="0",
        # Two fixed-port metric servers that would collide with any other head on this machine.
        DASHBOARD_METRIC_PORT=str(metric_ports[0]),
        AUTOSCALER_METRIC_PORT=str(metric_ports[1]),
    )
    return env


@pytest.fixture(scope="module")
def ray_head(short_tmp):
    """A local Ray head with token authentication on, its own temp dir and ports; torn down completely."""
    root = os.path.join(short_tmp, "job")
    ray_tmp = os.path.join(root, "ray")
    os.makedirs(ray_tmp)
    # Ray's own command makes the token (256 random bits) in ~/.ray/auth_token; a private HOME keeps it in the test.
    home = os.path.join(root, "home")
    os.makedirs(home)
    generated = subprocess.run(
        [RAY, "get-auth-token", "--generate"], env={**os.environ, "HOME": home}, capture_output=True, text=True
    )
    assert generated.returncode == 0, generated.stderr
    token_path = os.path.join(home, ".ray", "auth_token")
    os.chmod(token_path, 0o600)

    base = free_port_block(12 + 50)
    gcs, dashboard, client, agent_http, agent_grpc, runtime_env, metrics, node_manager, object_manager = range(
        base, base + 9
    )
    env = _head_env(ray_tmp, token_path, (base + 9, base + 10))
    command = [
        RAY, "start", "--head", "--block", "--disable-usage-stats",
        "--dashboard-host", "127.0.0.1",  # the jobs API; Ray binds GCS and raylet to every interface regardless
        "--port", str(gcs), "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client),
        "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
        "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
        "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
        "--min-worker-port", str(base + 12), "--max-worker-port", str(base + 12 + 49),
        "--num-cpus", "2", "--temp-dir", ray_tmp,
    ]  # fmt: skip
    log_path = os.path.join(root, "head.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client_env = {**env, "HOME": home}  # what makes it a client of this head: RAY_AUTH_MODE=token and the token
    head = RayHead(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", client_env, ray_tmp, process, log_path)
    try:
        _wait_for_jobs_api(head)
        yield head
    finally:
        _stop_head(head)


def _wait_for_jobs_api(head: RayHead) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert head.process.poll() is None, _tail(head.log_path)
        if head.job("list", timeout=30).returncode == 0:
            return
        time.sleep(0.5)  # polling interval of an observer, not a race fix
    raise AssertionError("the head's jobs API never answered:\n" + _tail(head.log_path))


def _stop_head(head: RayHead) -> None:
    """SIGTERM `ray start --block` (it stops the processes it started), then SIGKILL whatever is left."""
    if head.process.poll() is None:
        head.process.send_signal(signal.SIGTERM)
        try:
            head.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.process.kill()
            head.process.wait()
    try:
        os.killpg(head.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    reap_orphans(head.ray_tmp)  # job drivers and workers run in sessions of their own, with our RAY_TMPDIR


def _tail(path: str, chars: int = 4000) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-chars:]


def _job_status(head: RayHead, job_id: str) -> str:
    """The job's status from `ray job status`, which words the final ones as sentences."""
    result = head.job("status", "--log-style", "record", job_id)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    for status, sentence in (("SUCCEEDED", "succeeded"), ("STOPPED", "was stopped"), ("FAILED", "failed")):
        if f"Job '{job_id}' {sentence}" in text:
            return status
    match = re.search(r"Status for job '[^']+': (\w+)", text)
    assert match, text
    return match.group(1)


def _job_logs(head: RayHead, job_id: str) -> str:
    result = head.job("logs", job_id)
    return result.stdout + result.stderr


def _wait_for_job(head: RayHead, job_id: str, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _job_status(head, job_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)  # polling interval of an observer, not a race fix
    raise AssertionError(f"job {job_id} did not end:\n" + _job_logs(head, job_id)[-4000:])


def _done(store: str) -> np.ndarray:
    if not os.path.exists(os.path.join(store, "zarr.json")):
        return np.zeros(0, dtype=bool)
    try:
        status, _ = RunStore.open(store, read_only=True).read_state()
    except sigray.StoreError:  # created but not yet complete
        return np.zeros(0, dtype=bool)
    return status == DONE


def _wait_for_done(head: RayHead, job_id: str, store: str, at_least: int, timeout_s: float = 180) -> None:
    """Poll the store, as a user would, until ``at_least`` windows are done."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if np.count_nonzero(_done(store)) >= at_least:
            return
        time.sleep(0.2)  # polling interval of an observer, not a race fix
    raise AssertionError(f"no progress in the store; job logs:\n{_job_logs(head, job_id)[-4000:]}")


def _generations(log_path: str) -> collections.Counter:
    with open(log_path) as f:
        return collections.Counter(line.split()[0] for line in f)


def test_ray_job_stop_mid_run_then_resubmit_resumes_and_generates_no_window_twice(ray_head, ray_session, tmp_path):
    started = time.monotonic()
    working_dir = tmp_path / "job"  # small: only what the job reads
    working_dir.mkdir()
    shutil.copy(nab_signal(SIGNAL), working_dir / f"{SIGNAL}.csv")
    store, log = str(tmp_path / "store"), str(tmp_path / "generated.log")
    entrypoint = [
        "sigray", "run", f"{SIGNAL}.csv", "--store", store, "--engine", "test-double",
        "--engine-option", f"delay_s={DELAY_S}", "--engine-option", f"log_path={log}",
        "--batch-size", str(BATCH), "--flush-interval", str(FLUSH_S),
    ]  # fmt: skip

    def submit(job_id: str) -> None:
        result = ray_head.job(
            "submit", "--working-dir", str(working_dir), "--runtime-env-json", RUNTIME_ENV,
            "--submission-id", job_id, "--no-wait", "--", *entrypoint,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

    # Token authentication is on: a client without the token is refused.
    anonymous = {k: v for k, v in ray_head.client_env.items() if not k.startswith("RAY_AUTH")}
    anonymous["HOME"] = os.path.dirname(ray_head.ray_tmp)  # no ~/.ray/auth_token there
    refused = subprocess.run(
        [RAY, "job", "list", "--address", ray_head.address], env=anonymous, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "Unauthorized" in refused.stderr, refused.stderr[-2000:]

    submit("sigray-first")
    _wait_for_done(ray_head, "sigray-first", store, STOP_AFTER)
    stopping = time.monotonic()
    stopped = ray_head.job("stop", "sigray-first")  # waits until the job has ended
    stop_s = time.monotonic() - stopping
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert _wait_for_job(ray_head, "sigray-first") == "STOPPED"

    # The driver got SIGTERM, flushed, said how far it got, and exited before Ray's SIGKILL.
    supervisor_log = os.path.join(ray_head.ray_tmp, "session_latest", "logs", "jobs", "supervisor-sigray-first.log")
    assert "terminated gracefully with SIGTERM" in _tail(supervisor_log), _tail(supervisor_log)
    done_at_stop = set(np.flatnonzero(_done(store)).tolist())
    assert f"resumable: {len(done_at_stop)} of 111 windows done" in _job_logs(ray_head, "sigray-first")
    assert STOP_AFTER <= len(done_at_stop) < 111, "the job was not stopped mid-run"
    wait_until_no_writer(store)  # (a graceful stop has released the lease already)

    submit("sigray-second")
    assert _wait_for_job(ray_head, "sigray-second") == "SUCCEEDED", _job_logs(ray_head, "sigray-second")[-4000:]
    second_logs = _job_logs(ray_head, "sigray-second")
    assert f"{len(done_at_stop)} reused" in second_logs, second_logs[-3000:]

    # Every window done, exactly once.
    status, attempts = RunStore.open(store, read_only=True).read_state()
    assert (status == DONE).all() and (attempts == 1).all()

    # Every window was generated, and none twice: a graceful stop lets the batches in flight finish and saves them.
    prompts = RunStore.open(store, read_only=True).read_prompts()
    window_of = {_digest(p): w for w, p in enumerate(prompts)}
    generated = _generations(log)
    assert set(generated) == set(window_of)
    assert [window_of[d] for d, k in generated.items() if k > 1] == []

    # The same anomalies as a run that was never interrupted (delay, batch and flush do not change results).
    reference = sigray.run([nab_signal(SIGNAL)], str(tmp_path / "ref"), engine="test-double")
    resumed = sigray.open(store).results().anomalies[SIGNAL]
    pd.testing.assert_frame_equal(resumed, reference.anomalies[SIGNAL].reset_index(drop=True), check_dtype=False)
    assert (RunStore.open(store).read_answers() == RunStore.open(str(tmp_path / "ref")).read_answers()).all()
    print(f"`ray job stop` took {stop_s:.1f} s; the test {time.monotonic() - started:.0f} s after the head was up")


def test_example_driver_connects_to_the_cluster_and_runs_one_store_per_batch(ray_head, tmp_path):
    signals = tmp_path / "signals"
    signals.mkdir()
    names = [SIGNAL, "ambient_temperature_system_failure"]  # 111 and 1,175 windows
    for name in names:
        shutil.copy(nab_signal(name), signals / f"{name}.csv")
    root = tmp_path / "runs"
    env = {**ray_head.client_env, "RAY_ADDRESS": ray_head.gcs_address}  # with the token, as any client
    command = [sys.executable, os.path.join(ROOT, "cluster", "driver.py"), str(signals), "--store-root", str(root)]
    command += ["--batch-signals", "1", "--engine", "test-double", "--set", "batch_size=64"]
    driver = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    output = driver.stdout + driver.stderr
    assert driver.returncode == 0, output[-4000:]
    assert "Connecting to existing Ray cluster" in output

    for store, name in zip(sorted(root.iterdir()), sorted(names)):  # batch-0000, batch-0001: sorted file names
        status, _ = RunStore.open(str(store), read_only=True).read_state()
        assert (status == DONE).all()
        assert f"{store}: 1 signals, {len(status)} windows ({len(status)} computed" in output
        for row in sigray.open(str(store)).results().anomalies[name].itertuples():
            assert re.search(rf"{name}\s+{row.start}\s+{row.end}", output), output[-3000:]
