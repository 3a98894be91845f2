"""`sigray` as a real process, and how to kill it with its local Ray cluster, for fault tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def start_cli(args: list[str], ray_tmp: str, address: str | None = None) -> subprocess.Popen:
    """`sigray ...` in its own session, so the caller can kill it all: with its own local Ray, or
    connected to the cluster at ``address``."""
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    if address:
        env["RAY_ADDRESS"] = address
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


def reap_orphans(ray_tmp: str, spare: int | None = None) -> int:
    """SIGKILL every process of the cluster at ``ray_tmp`` (they carry it as RAY_TMPDIR) but
    ``spare`` and this one; returns how many."""
    import psutil

    killed = 0
    for proc in psutil.process_iter():
        try:
            if proc.pid not in (spare, os.getpid()) and proc.environ().get("RAY_TMPDIR") == ray_tmp:
                proc.kill()
                killed += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return killed


def wait_until_no_writer(store: str, timeout_s: float = 120) -> None:
    """Block until the killed run's lease says nobody may still write (what a rerun waits for)."""
    from sigray.lease import read_lease

    deadline = time.monotonic() + timeout_s
    while (held := read_lease(store)) is not None and held.alive(time.time()):
        if time.monotonic() > deadline:
            raise RuntimeError("the killed run's coordinator never stopped renewing its lease")
        time.sleep(0.2)  # polling interval of an observer, not a race fix
