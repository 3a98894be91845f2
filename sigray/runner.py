"""The driver side of a run: open the store, start the actors, supervise, post-process.

The driver is the supervisor. A worker that dies (its process, its node) is reported
to the coordinator, which requeues its windows uncharged, and is replaced. A worker
whose lease timed out (a hung engine) is killed and replaced. A coordinator that dies
is restarted by Ray and rebuilds itself from the store. The driver itself holds no
state that the store does not: killing it and running the same command resumes.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sigray import lease as store_lease
from sigray import storage
from sigray.coordinator import Coordinator, CoordinatorSettings, Health
from sigray.errors import SigrayError
from sigray.messages import Progress
from sigray.plan import RunPlan
from sigray.stopping import StopRequested, init_ray_keeping_stop
from sigray.store import DONE, FAILED, RunStore
from sigray.worker import Worker, WorkerSettings

log = logging.getLogger(__name__)
_POLL_S = 1.0
_CLOSE_S = 15.0


def _worker_env() -> dict[str, str]:
    """vLLM logs every engine step at INFO; workers keep warnings unless the user asks."""
    return {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}


@dataclass
class SignalResult:
    """One signal's anomalies in sigllm's shape, and what could not be computed."""

    name: str
    anomalies: pd.DataFrame  # start, end, severity
    failed_windows: list[int]
    n_windows: int
    forecast: np.ndarray | None = None
    forecast_index: np.ndarray | None = None


@dataclass
class RunResult:
    store: str
    model: str = ""
    signals: dict[str, SignalResult] = field(default_factory=dict)
    total_windows: int = 0
    resumed_windows: int = 0  # already settled in the store when this run started
    computed_windows: int = 0  # settled by this run
    failed_windows: int = 0
    retries: int = 0
    requeued: int = 0
    workers_replaced: int = 0
    elapsed_s: float = 0.0
    windows_per_s: float = 0.0  # windows settled per second while workers ran (engine start excluded)
    stopped: bool = False  # a graceful stop (SIGTERM, deadline): resumable

    @property
    def anomalies(self) -> dict[str, pd.DataFrame]:
        return {name: result.anomalies for name, result in self.signals.items()}


def execute(
    plan: RunPlan,
    model_path: str,
    on_progress: Callable[[Progress], None] | None = None,
    deadline_s: float | None = None,
    ray_options: dict | None = None,
) -> RunResult:
    """Run (or resume) the planned run to its end, or to a graceful stop."""
    config = plan.config
    started = time.monotonic()
    with StopRequested(deadline_s) as stop:  # from here on a SIGTERM is a graceful stop
        store = RunStore.create_or_open(
            config.store, plan.identity, plan.fingerprint, plan.layout, plan.prompts, config.to_json()
        )
        owner = uuid.uuid4().hex
        store_lease.acquire(config.store, owner, config.store_lease_s, config.flush_interval_s)
        try:
            for note in store.repair(plan.prompts):
                log.warning("store %s: %s", config.store, note)
            status, _ = store.read_state()
            result = RunResult(store=config.store, model=config.model, total_windows=len(status))
            result.resumed_windows = int(np.count_nonzero(status != 0))
            if result.resumed_windows < len(status):
                _compute(plan, model_path, owner, result, on_progress, stop, ray_options or {})
            if not result.stopped:
                _postprocess(plan, RunStore.open(config.store), result)
        finally:
            store_lease.release(config.store, owner)
    result.elapsed_s = time.monotonic() - started
    return result


def _compute(plan, model_path, owner, result, on_progress, stop: StopRequested, ray_options) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    config = plan.config
    if not stop.requested:
        _ensure_ray(ray_options)
    if stop.requested:  # before any worker started: nothing to wait for
        if not ray.is_initialized():
            ray.shutdown()  # a TERM cut ray.init short: leave no half-started local cluster
        result.stopped = True
        return
    gpus = config.gpus_per_worker
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    settings = CoordinatorSettings(
        store_path=storage.normalize(config.store),
        owner=owner,
        lease_ttl_s=config.store_lease_s,
        batch_size=config.batch_size,
        max_attempts=config.max_attempts,
        seed=config.seed,
        n_samples=plan.sampling.n,
        flush_interval_s=config.flush_interval_s,
        lease_timeout_s=config.lease_timeout_s,
    )
    coordinator = (
        ray.remote(Coordinator)
        .options(
            max_restarts=-1,
            num_cpus=0,
            name=f"sigray-coordinator-{owner[:12]}",
            # Beside the driver: a lost GPU node then costs only its worker's leases, never
            # the run's state; if the driver's node itself dies, the restart goes anywhere.
            scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True),
            runtime_env={"env_vars": storage.client_env()},  # how to reach an object store
        )
        .remote(settings)
    )
    worker_settings = WorkerSettings(
        config.engine, model_path, dict(config.engine_options), plan.sampling, plan.answers
    )
    worker_options = {
        "num_gpus": gpus,
        "num_cpus": config.cpus_per_worker,
        "max_restarts": 0,
        "runtime_env": {"env_vars": _worker_env()},
    }
    supervisor = _Supervisor(coordinator, worker_options, worker_settings, config.workers, config.lease_timeout_s)
    try:
        final = supervisor.supervise(stop, on_progress)
    finally:
        supervisor.shutdown()
    result.computed_windows = final.done + final.failed - result.resumed_windows
    result.failed_windows = final.failed
    result.retries = final.retries
    result.requeued = final.requeued
    result.windows_per_s = final.windows_per_s
    result.workers_replaced = supervisor.replaced
    result.stopped = not final.finished


class _Supervisor:
    """Keeps ``n_workers`` workers serving the coordinator until the run ends."""

    def __init__(
        self, coordinator, worker_options: dict, worker_settings: WorkerSettings, n_workers: int, lease_timeout_s: float
    ):
        self.coordinator = coordinator
        self.lease_timeout_s = lease_timeout_s
        self.ever_seen: set[str] = set()  # workers that have called some coordinator incarnation
        self.killed: set[str] = set()
        self.worker_options = worker_options
        self.worker_settings = worker_settings
        self.workers: dict[str, object] = {}
        self.runs: dict[object, str] = {}
        self.replaced = 0
        # Workers lost in a row with no window settled in between: a crash loop (an engine
        # that cannot load), not preemptions. Progress between losses resets the count.
        self.lost_in_a_row = 0
        self.settled_at_last_loss = -1
        self.max_lost_in_a_row = 3 * n_workers + 3
        for _ in range(n_workers):
            self._start_worker()

    def _start_worker(self) -> None:
        worker_id = uuid.uuid4().hex[:8]
        import ray

        # Named, so `ray list actors` shows whose it is (and fault tests can find it).
        actor = ray.remote(Worker).options(name=f"sigray-worker-{worker_id}", **self.worker_options)
        worker = actor.remote(worker_id, self.coordinator, self.worker_settings)
        self.workers[worker_id] = worker
        self.runs[worker.run.remote()] = worker_id

    def supervise(self, stop: StopRequested, on_progress) -> Progress:
        import ray

        finished = self.coordinator.wait_finished.remote()
        while True:
            ready, _ = ray.wait([finished, *self.runs], num_returns=1, timeout=_POLL_S)
            if finished in ready:
                try:
                    return ray.get(finished)
                except ray.exceptions.RayActorError:
                    finished = self.coordinator.wait_finished.remote()  # it restarted; ask the new one
                    continue
            for ref in ready:
                self._worker_ended(ref)
            health = self._ask(self.coordinator.health.remote(), None)
            if health is not None:
                self._check(health)
            if stop.requested:
                log.warning("stop requested: flushing and exiting; run the same command to resume")
                return ray.get(self.coordinator.stop.remote())
            progress = self._ask(self.coordinator.progress.remote(), None)
            if progress is not None and on_progress is not None:
                on_progress(progress)

    def _check(self, health: Health) -> None:
        """Stop on a fatal store error; kill workers that stopped answering (replaced when their run ends)."""
        import ray

        if health.fatal:
            raise SigrayError(f"the run stopped: {health.fatal}. Fix the cause and run the same command to resume.")
        self.ever_seen |= health.seen
        hung = {w: "its lease timed out" for w in health.timed_out}
        if health.uptime_s > self.lease_timeout_s:
            for worker_id in self.ever_seen - health.seen:
                hung.setdefault(worker_id, "it never came back to the restarted coordinator")
        for worker_id, why in hung.items():
            if worker_id in self.workers and worker_id not in self.killed:
                log.warning("worker %s stopped answering (%s); replacing it", worker_id, why)
                self.killed.add(worker_id)
                ray.kill(self.workers[worker_id], no_restart=True)

    def _worker_ended(self, ref) -> None:
        import ray

        worker_id = self.runs.pop(ref)
        worker = self.workers.pop(worker_id, None)
        try:
            ray.get(ref)
            return  # it ran out of work: the run is finishing or stopping
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            cause = exc
        if worker is not None:
            # Ray may declare an unresponsive (frozen) process dead while it still holds its
            # CPUs and GPUs; make sure it is gone before its replacement needs them.
            ray.kill(worker, no_restart=True)
        requeued = self._ask(self.coordinator.worker_lost.remote(worker_id), 0)
        log.warning("worker %s was lost (%s); %s windows requeued", worker_id, _one_line(cause), requeued)
        progress = self._ask(self.coordinator.progress.remote(), None)
        settled = -1 if progress is None else progress.done + progress.failed
        self.lost_in_a_row = 1 if settled > self.settled_at_last_loss else self.lost_in_a_row + 1
        self.settled_at_last_loss = max(settled, self.settled_at_last_loss)
        if self.lost_in_a_row > self.max_lost_in_a_row:
            raise SigrayError(
                f"workers keep failing ({self.lost_in_a_row} lost with no progress in between); "
                f"last error: {_one_line(cause)}"
            )
        self.replaced += 1
        self._start_worker()

    def _ask(self, ref, fallback):
        """A coordinator call that tolerates its restart."""
        import ray

        try:
            return ray.get(ref, timeout=60)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            return fallback

    def shutdown(self) -> None:
        """Close engines gracefully (bounded wait), then end every actor of the run."""
        import ray

        closing = [worker.close.remote() for worker in self.workers.values()]
        ray.wait(closing, num_returns=len(closing), timeout=_CLOSE_S)
        for worker in self.workers.values():
            ray.kill(worker, no_restart=True)
        ray.kill(self.coordinator, no_restart=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:300] if text else type(exc).__name__


def _ensure_ray(options: dict) -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):  # under `ray job submit`, or a user's cluster
        init_ray_keeping_stop(lambda: ray.init(address="auto", **options))
    else:
        init_ray_keeping_stop(lambda: ray.init(include_dashboard=False, **options))


def _postprocess(plan: RunPlan, store: RunStore, result: RunResult) -> None:
    """sigllm's post-processing per signal on the stored answers; results saved in the store."""
    status, _ = store.read_state()
    for index, (signal_plan, signal_range) in enumerate(zip(plan.plans, store.layout.signals)):
        where = slice(signal_range.offset, signal_range.stop)
        answers = store.read_answers(where.start, where.stop)
        settled = status[where]
        per_window = [list(map(str, answers[w])) if settled[w] == DONE else None for w in range(len(settled))]
        detection = plan.pipeline.postprocess(signal_plan, per_window)
        store.write_result(
            index,
            detection.anomalies,
            detection.failed_windows,
            detection.forecast,
            detection.forecast_index,
            signal_plan.signal.timestamps,
            signal_plan.signal.values,
        )
        result.signals[signal_range.name] = SignalResult(
            name=signal_range.name,
            anomalies=detection.anomalies,
            failed_windows=detection.failed_windows,
            n_windows=signal_range.n_windows,
            forecast=detection.forecast,
            forecast_index=detection.forecast_index,
        )
    result.failed_windows = int(np.count_nonzero(status == FAILED))
