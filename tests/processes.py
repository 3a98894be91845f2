"""Running `sigray` as a real process, killing it, and waiting on its store, for fault tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

import sigray
from sigray.store import DONE, RunStore


def start_cli(args: list[str], ray_tmp: str) -> subprocess.Popen:
    """`sigray ...` in its own session, with its own local Ray, so the test can kill it all."""
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "sigray.cli", *args]
    return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL the driver, then whatever it left behind in its session (Ray's agents)."""
    process.kill()
    process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def reap_orphans(ray_tmp: str) -> None:
    """SIGKILL every process the killed runs left (they carry its RAY_TMPDIR)."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RAY_TMPDIR") == ray_tmp and proc.pid != os.getpid():
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass


def wait_until_no_writer(store: str) -> None:
    """Block until the killed run's lease says nobody may still write (what a rerun waits for)."""
    from sigray.lease import read_lease

    deadline = time.monotonic() + 120
    while (held := read_lease(store)) is not None and held.alive(time.time()):
        assert time.monotonic() < deadline, "the killed run's coordinator never stopped"
        time.sleep(0.2)  # polling interval of an observer, not a race fix


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
