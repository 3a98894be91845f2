"""A driver's store lease stays held while its interpreter is busy, and ends with the driver.

The driver renews its lease while it works on the store itself (registering signals,
post-processing). Renewing from a thread failed when the main thread kept the GIL (sigllm, Orion,
numpy: a renewal seen seconds late); these tests hold the GIL outright, longer than the lease
lives, with another process trying to take the store all the while.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from sigray import lease
from sigray.config import RunConfig
from sigray.errors import StoreLockedError
from sigray.lease_keeper import KeptLease
from sigray.plan import make_plan
from sigray.prepare import prepare_store
from tests.conftest import nab_signal
from tests.processes import wait_renewed

TTL_S, RENEW_S = 1.0, 0.2


def _hold_the_gil(seconds: int) -> None:
    """libc's sleep called through ``PyDLL``, which keeps the GIL for the whole call: no thread of
    this process runs meanwhile (as in a long C call of a library the driver runs)."""
    ctypes.PyDLL(None).sleep(seconds)


def _intruder(store: str, seconds: float) -> subprocess.Popen:
    """Another run trying to take the store's lease every 0.2 s for ``seconds``; prints
    ``ready`` when it starts trying, then ``took`` or ``refused``."""
    code = textwrap.dedent(f"""
        import time
        from sigray import lease
        from sigray.errors import StoreLockedError
        print("ready", flush=True)
        deadline = time.monotonic() + {seconds}
        while time.monotonic() < deadline:
            try:
                lease.acquire({store!r}, "intruder", ttl_s=60, renew_every_s=1)
            except StoreLockedError:
                time.sleep(0.2)  # tries now and then: what is under test is elapsed time
                continue
            print("took", flush=True)
            raise SystemExit
        print("refused", flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def _held_throughout(store: str, hold_s: int) -> str:
    """Once the keeper renews, hold this process's GIL for ``hold_s`` (several times the lease's
    time to live) while an intruder tries to take the store; what the intruder says."""
    wait_renewed(store, since=time.time())
    intruder = _intruder(store, hold_s + 1)
    _hold_the_gil(hold_s)
    out, _ = intruder.communicate(timeout=60)
    return out.strip()


def test_a_kept_lease_is_renewed_while_the_drivers_interpreter_is_held(tmp_path):
    store = str(tmp_path / "store")
    held = lease.acquire(store, "driver", ttl_s=TTL_S, renew_every_s=RENEW_S)
    with KeptLease(store, held, ttl_s=TTL_S) as kept:
        assert _held_throughout(store, hold_s=4) == "refused"
        kept.check()
    assert lease.read_lease(store).owner == "driver"


def test_a_prepared_store_keeps_its_lease_from_the_start(tmp_path):
    """Registering a million windows takes minutes, longer than a lease lives: the store's
    preparation keeps its lease renewed from the moment it takes it."""
    store = str(tmp_path / "store")
    config = RunConfig(store=store, engine="test-double", store_lease_s=TTL_S, flush_interval_s=RENEW_S)
    prepared = prepare_store(make_plan(config, [nab_signal("cpu_utilization_asg_misconfiguration")]), "driver")
    try:
        assert _held_throughout(store, hold_s=4) == "refused"
        prepared.kept.check()
    finally:
        prepared.kept.close()
        lease.release(store, "driver")
    assert lease.read_lease(store) is None


def test_the_keeper_ends_with_its_driver_and_a_rerun_takes_the_store(tmp_path):
    """A SIGKILLed driver leaves no process renewing its lease, even when a child it forked still
    holds the keeper's pipe: the same command run again takes the store within seconds. The keeper
    is out of the driver's process group (a Ctrl-C there is a graceful stop, which still writes)."""
    store = str(tmp_path / "store")
    code = textwrap.dedent(f"""
        import os, time
        from sigray import lease
        from sigray.lease_keeper import KeptLease
        held = lease.acquire({store!r}, "driver", ttl_s=60, renew_every_s={RENEW_S})
        kept = KeptLease({store!r}, held, ttl_s=60)
        child = os.fork()  # a fork without exec (multiprocessing's default): it inherits every descriptor
        if child == 0:
            time.sleep(600)
            os._exit(0)
        print(kept._process.pid, child, flush=True)
        time.sleep(600)
    """)
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    keeper_pid, child_pid = map(int, driver.stdout.readline().split())
    keeper = psutil.Process(keeper_pid)
    try:
        assert os.getpgid(keeper_pid) != os.getpgid(driver.pid)
        with pytest.raises(StoreLockedError):  # renewed: a 60 s lease of a live driver
            lease.acquire(store, "rerun", ttl_s=60, renew_every_s=1)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        keeper.wait(timeout=10)  # its parent is gone, though its pipe is still open in the child
        deadline, taken = time.monotonic() + 15, None
        while taken is None and time.monotonic() < deadline:
            try:
                taken = lease.acquire(store, "rerun", ttl_s=60, renew_every_s=1)
            except StoreLockedError:
                time.sleep(0.2)  # two renewal periods of silence are waited for; the rerun polls
        assert taken is not None and lease.read_lease(store).owner == "rerun"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the forked child


def test_a_keeper_killed_on_its_own_is_replaced_and_the_lease_kept(tmp_path):
    store = str(tmp_path / "store")
    held = lease.acquire(store, "driver", ttl_s=TTL_S, renew_every_s=RENEW_S)
    with KeptLease(store, held, ttl_s=TTL_S) as kept:
        first = kept._process
        first.kill()
        first.wait()
        kept.check()  # not lost: another keeper renews from here
        assert kept._process is not first and kept._process.poll() is None
        assert _held_throughout(store, hold_s=3) == "refused"


@pytest.mark.parametrize("keeper_fault", ["hung", "killed"])
def test_a_driver_whose_keeper_stopped_renewing_never_writes_past_its_lease(tmp_path, keeper_fault):
    """The driver reads the lease itself before it writes: once another run took the store after a
    keeper hung (SIGSTOP) or was killed, the driver's fencing check refuses, naming the new holder."""
    store = str(tmp_path / "store")
    held = lease.acquire(store, "driver", ttl_s=TTL_S, renew_every_s=RENEW_S)
    with KeptLease(store, held, ttl_s=TTL_S) as kept:
        wait_renewed(store, since=held.renewed_at)
        keeper = kept._process
        os.kill(keeper.pid, signal.SIGSTOP if keeper_fault == "hung" else signal.SIGKILL)
        deadline, taken = time.monotonic() + 30, None
        while taken is None:
            assert time.monotonic() < deadline, "the lease never lapsed"
            try:
                taken = lease.acquire(store, "second run", ttl_s=60, renew_every_s=1)
            except StoreLockedError:
                time.sleep(0.1)  # the second run polls until the lease lapses
        with pytest.raises(StoreLockedError, match=r"lost the write lease \(now held by pid"):
            kept.check()
        if keeper_fault == "hung":
            os.kill(keeper.pid, signal.SIGCONT)
    assert lease.read_lease(store).owner == "second run"


def test_a_late_keeper_is_covered_by_the_driver_before_it_writes(tmp_path):
    """A keeper that hangs while nobody else wants the store: the driver's check renews the lease
    itself, so the write goes ahead on a lease that is live."""
    store = str(tmp_path / "store")
    held = lease.acquire(store, "driver", ttl_s=TTL_S, renew_every_s=RENEW_S)
    with KeptLease(store, held, ttl_s=TTL_S) as kept:
        wait_renewed(store, since=held.renewed_at)
        os.kill(kept._process.pid, signal.SIGSTOP)
        while (late := lease.read_lease(store)).expires_at - time.time() > TTL_S / 2:
            time.sleep(0.05)  # until the lease is past half its time to live
        kept.check()
        assert lease.read_lease(store).renewed_at > late.renewed_at  # renewed by the check: the keeper is stopped
        os.kill(kept._process.pid, signal.SIGCONT)
