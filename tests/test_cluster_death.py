"""The whole Ray cluster dies mid-run (every Ray process SIGKILLed: a power cut, a
preempted allocation); the cluster is started again and the same command resumes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import sigray
from sigray.store import DONE, RunStore
from tests.processes import free_port, kill_session, reap_orphans, start_cli, wait_for_done, wait_until_no_writer

pytestmark = pytest.mark.extended
NAME = "ambient_temperature_system_failure"
BATCH, DELAY_S, FLUSH_S = 8, 0.1, 1.0


def start_head(ray_tmp: str, port: int) -> None:
    """`ray start --head` on loopback, with its own temp dir (never `ray stop`: it stops every cluster here)."""
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    command = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--port", str(port)]
    command += ["--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false"]
    command += ["--temp-dir", ray_tmp, "--disable-usage-stats"]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)


def test_the_whole_cluster_killed_mid_run_then_restarted_resumes(ray_session, tmp_path, short_tmp):
    from tests.conftest import nab_signal

    signal = nab_signal(NAME)
    store = str(tmp_path / "run")
    ray_tmp = os.path.join(short_tmp, "clu")
    port = free_port()
    address = f"127.0.0.1:{port}"
    args = ["run", signal, "--store", store, "--engine", "test-double", "--batch-size", str(BATCH)]
    args += ["--flush-interval", str(FLUSH_S), "--engine-option", f"delay_s={DELAY_S}"]
    try:
        start_head(ray_tmp, port)
        first = start_cli(args, ray_tmp, address)
        try:
            wait_for_done(store, 200, first)
            assert reap_orphans(ray_tmp, spare=first.pid) >= 3  # GCS, raylet, workers, coordinator...
            killed_at = time.monotonic()
            try:
                code = first.wait(timeout=180)  # the driver notices its cluster is gone
            except subprocess.TimeoutExpired:
                code = None
            print(f"driver exited {code} {time.monotonic() - killed_at:.0f} s after the cluster died")
            print(first.stdout.read().decode()[-3000:])
        finally:
            kill_session(first)
        assert code not in (0, None), "the driver must fail, not hang or claim success"
        wait_until_no_writer(store)
        status, _ = RunStore.open(store).read_state()
        done_at_kill = np.count_nonzero(status == DONE)
        assert 200 <= done_at_kill < len(status)

        start_head(ray_tmp, port)
        second = start_cli(args, ray_tmp, address)
        output, _ = second.communicate(timeout=300)
        output = output.decode()
        assert second.returncode == 0, output[-3000:]
        assert f"{done_at_kill} reused" in output
    finally:
        reap_orphans(ray_tmp)

    status, attempts = RunStore.open(store).read_state()
    assert (status == DONE).all() and (attempts == 1).all()
    reference = str(tmp_path / "reference")
    sigray.run([signal], reference, engine="test-double", batch_size=BATCH)
    assert (RunStore.open(store).read_answers() == RunStore.open(reference).read_answers()).all()
    pd.testing.assert_frame_equal(
        sigray.open(store).results().anomalies[NAME], sigray.open(reference).results().anomalies[NAME]
    )
