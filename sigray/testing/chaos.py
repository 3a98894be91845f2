"""Chaos: one `sigray run`, and a seeded schedule of real faults until it completes.

Faults, each real: SIGKILL a worker process; SIGSTOP one (a hung engine, caught by the
lease timeout); SIGKILL the coordinator (Ray restarts it from the store); SIGKILL the
driver with its whole local Ray cluster, or SIGTERM it (a graceful stop, exit 75): the
same command is then run again. Faults are spaced by a seeded random delay and stop
once ``n_faults`` have landed; the run then finishes. Used by tests/test_chaos.py and
benchmarks/chaos.py, with the deterministic test-double engine.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass, field

from sigray.testing.processes import kill_session, reap_orphans, start_cli, wait_until_no_writer

# Fault kinds and their weights in the schedule (driver faults cost a Ray restart each).
KINDS = {"worker_sigkill": 3, "worker_hang": 2, "coordinator_sigkill": 2, "driver_sigkill": 1, "driver_sigterm": 1}
DRIVER_KINDS = ("driver_sigkill", "driver_sigterm")


@dataclass
class ChaosReport:
    faults: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, kind)
    driver_runs: int = 0
    exit_codes: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    to_come: list[str] = field(default_factory=list)  # the current round of kinds (``_next_kind``)
    output: str = ""


def _ray_processes(ray_tmp: str, title: str) -> list:
    """Live processes of this run's Ray cluster whose title starts with ``title``."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            cmdline = proc.cmdline()
            if cmdline and cmdline[0].startswith(title) and proc.environ().get("RAY_TMPDIR") == ray_tmp:
                if proc.status() != psutil.STATUS_STOPPED:
                    found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def run_chaos(
    command: list[str],
    store: str,
    ray_tmp: str,
    n_faults: int,
    seed: int,
    gap_s: tuple[float, float] = (0.5, 2.0),
    kinds: dict[str, int] | None = None,
    timeout_s: float = 1200,
) -> ChaosReport:
    """Run ``sigray <command>`` to completion while injecting ``n_faults`` faults."""
    rng = random.Random(seed)
    kinds = kinds or KINDS
    report = ChaosReport()
    started = time.monotonic()
    outputs = []
    try:
        while True:
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"chaos: the run did not finish in {timeout_s} s")
            driver = start_cli(command, ray_tmp)
            report.driver_runs += 1
            restart = _inject_until_driver_fault(driver, store, ray_tmp, rng, report, n_faults, gap_s, kinds, started)
            if restart:
                if driver.poll() is None:
                    kill_session(driver)
                outputs.append(driver.stdout.read().decode(errors="replace"))
                report.exit_codes.append(driver.returncode)
                reap_orphans(ray_tmp)
                wait_until_no_writer(store)
                continue
            output, _ = driver.communicate(timeout=max(1.0, timeout_s - (time.monotonic() - started)))
            outputs.append(output.decode(errors="replace"))
            report.exit_codes.append(driver.returncode)
            if driver.returncode == 75:  # a SIGTERM that landed as the run ended: resume
                continue
            break
    finally:
        reap_orphans(ray_tmp)
        report.elapsed_s = time.monotonic() - started
        report.output = "\n----- next driver -----\n".join(outputs)
    return report


def _next_kind(report: ChaosReport, kinds: dict[str, int], rng: random.Random) -> str:
    """Kinds drawn from a seeded shuffle of ``weight`` copies of each: every kind lands once
    in each round of ``sum(weights)`` faults, in proportion, in a random order."""
    if not report.to_come:
        report.to_come = [kind for kind, weight in kinds.items() for _ in range(weight)]
        rng.shuffle(report.to_come)
    return report.to_come.pop()


def _inject_until_driver_fault(driver, store, ray_tmp, rng, report, n_faults, gap_s, kinds, started) -> bool:
    """Inject faults into this driver's run; True when the driver was killed or stopped (run it again)."""
    while driver.poll() is None and len(report.faults) < n_faults:
        time.sleep(rng.uniform(*gap_s))  # the schedule: seeded gaps between faults
        if driver.poll() is not None or not _ray_processes(ray_tmp, "ray::Worker"):
            continue  # not computing yet (planning, Ray and engines starting): no fault to land
        kind = _next_kind(report, kinds, rng)
        if kind in DRIVER_KINDS:
            report.faults.append((time.monotonic() - started, kind))
            if kind == "driver_sigkill":
                kill_session(driver)
            else:
                driver.send_signal(signal.SIGTERM)
                driver.wait(timeout=120)
            return True
        title = "ray::Coordinator" if kind == "coordinator_sigkill" else "ray::Worker"
        targets = _ray_processes(ray_tmp, title)
        if not targets:
            continue
        target = rng.choice(sorted(targets, key=lambda p: p.pid))
        try:
            target.send_signal(signal.SIGSTOP if kind == "worker_hang" else signal.SIGKILL)
        except OSError:
            continue
        report.faults.append((time.monotonic() - started, kind))
    return False
