"""Where a run's CPU work besides the engines runs: sigllm's windowing of the signals that
join a run (``sigray.feed``) and its post-processing (``sigray.postprocess``) go to Ray tasks
when the run's Ray cluster has CPUs to spare, else they stay in the driver (issue 16.2).

Tasks return what they made; the driver (or the coordinator, for windows) writes it, so the
store keeps one writer. A task is worth it only with CPUs beside the engines' workers: on the
2 cores measured here, post-processing in tasks was 15% slower than the driver alone
(benchmarks/README.md "Scale"). ``$SIGRAY_TASKS`` overrides the choice: ``never`` (the driver
alone), ``always`` (tasks whenever Ray is up with a CPU free beside the workers, however few:
benchmarks compare), ``auto``.
"""

from __future__ import annotations

import functools
import os
import sys

from sigray.errors import ConfigError

TASKS_FROM = 8  # signals at least: a Ray worker process's first task imports sigllm and Orion (seconds)
TASKS_FREE_CPUS = 4  # CPUs free in the cluster at least (besides the workers', the driver's)
MAX_IN_FLIGHT = 16  # tasks at once per kind: what they return waits in Ray's object store
_MODES = ("auto", "always", "never")


def tasks_mode() -> str:
    """``$SIGRAY_TASKS``: auto (the default), always or never. Raises ConfigError for another value."""
    mode = os.environ.get("SIGRAY_TASKS", "").strip().lower() or "auto"
    if mode not in _MODES:
        raise ConfigError(f"SIGRAY_TASKS={mode!r}: expected one of {', '.join(_MODES)} (unset: auto).")
    return mode


def use_tasks(n_signals: int, busy_cpus: float = 0.0) -> bool:
    """Whether work on ``n_signals`` signals goes to Ray tasks: only while this process's Ray
    is up (a run that generates nothing never starts Ray for it). ``busy_cpus``: CPUs the run's
    workers are about to take (Ray counts them once they are placed)."""
    ray = sys.modules.get("ray")
    if n_signals == 0 or ray is None or not ray.is_initialized():
        return False
    mode = tasks_mode()
    if mode == "never":
        return False
    free = ray.available_resources().get("CPU", 0) - busy_cpus
    if mode == "always":
        return free >= 1  # a task needs a CPU: with none beside the workers it would wait forever
    return n_signals >= TASKS_FROM and free >= TASKS_FREE_CPUS


def in_flight() -> int:
    """How many tasks of one kind to keep submitted: the cluster's CPUs (Ray queues the rest
    anyway; more would only hold their results in the object store), 1 to ``MAX_IN_FLIGHT``."""
    import ray

    return max(1, min(MAX_IN_FLIGHT, int(ray.cluster_resources().get("CPU", 1))))


@functools.cache
def remote(function):
    """``function`` as a Ray task of one CPU, retried if its process dies, reaching the run's
    object store; made once per process, when Ray is up (importing sigray needs no Ray)."""
    import ray

    from sigray.storage import client_env

    return ray.remote(num_cpus=1, max_retries=3, runtime_env={"env_vars": client_env()})(function)
