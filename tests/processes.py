"""Running `sigray` as a real process, killing it, and waiting on its store, for fault tests."""

from __future__ import annotations

import socket
import subprocess
import time

import numpy as np

import sigray
from sigray import lease
from sigray.store import DONE, RunStore
from sigray.testing.processes import kill_session, reap_orphans, start_cli, wait_until_no_writer

__all__ = [
    "free_port",
    "kill_session",
    "reap_orphans",
    "start_cli",
    "wait_for_done",
    "wait_renewed",
    "wait_until_no_writer",
]


def free_port() -> int:
    """A loopback port free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_done(store: str, at_least: int, process: subprocess.Popen) -> None:
    """Block until the store shows ``at_least`` done windows (polling the store, as users do)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        try:
            status, _ = RunStore.open(store, read_only=True).read_state()
        except sigray.StoreError:
            status = np.zeros(0)  # not created yet
        if np.count_nonzero(status == DONE) >= at_least:
            return
        time.sleep(0.2)  # polling interval of an observer, not a race fix
    raise AssertionError("the run made no progress")


def sigkill_mid_run_then_rerun(command: list[str], store: str, at_least: int, ray_tmp: str, timeout_s: float = 400):
    """Start `sigray ...`, SIGKILL it once ``at_least`` windows are done, wait for its writer
    to stop, run the same command again. Returns (window ids done at the kill, the rerun's
    completed process output and return code)."""
    first = start_cli(command, ray_tmp)
    try:
        wait_for_done(store, at_least, first)
    finally:
        kill_session(first)
    wait_until_no_writer(store)
    status, _ = RunStore.open(store).read_state()
    done_at_kill = set(np.flatnonzero(status == DONE).tolist())
    second = start_cli(command, ray_tmp)
    try:
        output, _ = second.communicate(timeout=timeout_s)
    finally:
        kill_session(second)
        reap_orphans(ray_tmp)
    return done_at_kill, output.decode(), second.returncode


def wait_renewed(store, since: float, timeout_s: float = 30) -> None:
    """Until the store's lease was renewed after ``since`` (the keeper is up and renewing)."""
    deadline = time.monotonic() + timeout_s
    while lease.read_lease(store).renewed_at <= since:
        assert time.monotonic() < deadline, "the lease was never renewed"
        time.sleep(0.05)  # polling an observed condition
