"""The driver side of a run: open the store, start the actors, supervise, post-process.

The store is prepared first (``sigray.prepare``: lease, create or check, repair, register
signals); post-processing (``sigray.postprocess``) saves each signal's result in the run's
result set as soon as its windows are saved, between the supervisor's checks.

The driver is the supervisor. A worker that dies (its process, its node) is reported
to the coordinator, which requeues its windows uncharged, and is replaced. A worker
whose lease timed out (a hung engine) is killed and replaced. A coordinator that dies
is restarted by Ray and rebuilds itself from the store. The driver itself holds no
state that the store does not: killing it and running the same command resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sigray import lease as store_lease
from sigray import tasks
from sigray.coordinator import Coordinator, CoordinatorSettings, Health
from sigray.engines import engine_class, rate_limits
from sigray.errors import SignalStoppedRun, SigrayError, SigrayWarning, WindowingError, one_line, stopped_by
from sigray.feed import SignalFeed
from sigray.messages import AddedSignals, Progress
from sigray.plan import RunPlan
from sigray.pool import CLOSE_S, WorkerPool, close_workers
from sigray.postprocess import Detections, SignalResult
from sigray.prepare import prepare_store
from sigray.rate_limit import Schedule
from sigray.stopping import StopRequested, init_ray_keeping_stop
from sigray.storage import client_env
from sigray.store import FAILED, PENDING
from sigray.store.result_sets import ResultSetInfo
from sigray.worker import RECONNECT_S, EngineSpec, Worker, WorkerSettings

log = logging.getLogger(__name__)
_POLL_S = 1.0
_PLACEMENT_WARNING_S = 30.0  # no worker placed for this long: say which resources are missing


def _worker_env(engine_options: dict) -> dict[str, str]:
    """vLLM logs every engine step at INFO; workers keep warnings unless the user asks. An
    engine's key (the variable ``api_key_env`` names) goes from the driver's environment to
    the workers', wherever they run."""
    env = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    variable = engine_options.get("api_key_env")
    if variable and variable in os.environ:
        env[variable] = os.environ[variable]
    return env


@dataclass
class RunResult:
    """What a run did and found. ``total_windows`` counts distinct windows (a window two
    signals share, or a signal repeats, is asked once); ``signal_windows`` counts them per
    signal. ``complete``: every signal has its result (not a stop, not an unfinished store)."""

    store: str
    model: str = ""
    signals: dict[str, SignalResult] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # signals left without a result (pending windows, a stop)
    unregistered: list[str] = field(default_factory=list)  # of those, signals a stop left unwindowed
    n_signals: int = 0
    total_windows: int = 0
    signal_windows: int = 0
    resumed_windows: int = 0  # already settled in the store when this run started
    computed_windows: int = 0  # settled by this run
    added_windows: int = 0  # windows new to the store (its other windows were there already)
    failed_windows: int = 0
    retries: int = 0
    requeued: int = 0
    workers_replaced: int = 0
    workers_reused: int = 0  # workers whose engine an earlier run in this process loaded (WorkerPool)
    # Prompt tokens per window asked by this run, as the served model counts them (None: not counted).
    prompt_tokens_mean: float | None = None
    prompt_tokens_max: int | None = None
    elapsed_s: float = 0.0
    windows_per_s: float = 0.0  # windows settled per second while workers ran (engine start excluded)
    stopped: bool = False  # a graceful stop (SIGTERM, deadline): resumable
    result_set: ResultSetInfo | None = None
    detection_changes: list[tuple[str, object, object]] = field(default_factory=list)  # vs the last set used
    reused_results: int = 0  # signals whose result for this setting was already saved
    # Seconds per phase: planning, preparing the store, windows (engines' start included;
    # post-processing of signals that finished meanwhile overlaps it), post-processing after;
    # and ``first_batch_s``, from the end of planning until the first batch went to a worker.
    timings: dict[str, float] = field(default_factory=dict)
    first_batch_at: float | None = None  # Unix time; None when no window was asked

    @property
    def anomalies(self) -> dict[str, pd.DataFrame]:
        return {name: result.anomalies for name, result in self.signals.items()}

    @property
    def complete(self) -> bool:
        return not self.stopped and not self.missing

    @property
    def unanswered(self) -> list[str]:
        """Signals with a result but not one window answered validly: their "no anomalies" means nothing."""
        return [n for n, s in self.signals.items() if s.n_windows and len(s.failed_windows) == s.n_windows]

    def __repr__(self) -> str:  # a summary; each signal's in ``signals``, the figures as attributes
        state = "complete" if self.complete else "stopped" if self.stopped else f"{len(self.missing)} signal(s) missing"
        return (
            f"RunResult({self.store!r}: {state}, {len(self.signals)} of {self.n_signals} signal(s) with results, "
            f"{self.total_windows} windows ({self.computed_windows} computed, {self.resumed_windows} resumed, "
            f"{self.failed_windows} failed), {self.elapsed_s:.1f} s)"
        )


def execute(
    plan: RunPlan,
    model_path: str | None,
    on_progress: Callable[[Progress], None] | None = None,
    deadline_s: float | None = None,
    ray_options: dict | None = None,
    new: bool = False,
    compute: bool = True,
    pool: WorkerPool | None = None,
) -> RunResult:
    """Run (or resume) the planned run to its end, or to a graceful stop.

    ``new``: replace the store (crash-safe; refused while another run holds it).
    ``compute``: False only post-processes (``sigray detect``): signals whose windows
    are not all settled are left ``missing``; no engine and no Ray start.
    ``pool``: workers kept from an earlier run of this process serve this one, and this
    run's are kept for the next (their engines stay loaded); without it workers end with the run.
    """
    config = plan.config
    started, started_at = time.monotonic(), time.time()
    with StopRequested(deadline_s) as stop:  # from here on a SIGTERM is a graceful stop
        owner = uuid.uuid4().hex
        # Computing, the run registers what new signals the first batches of windows need and
        # adds the rest as they are answered (``sigray.feed``).
        first_windows = 2 * config.batch_size * config.workers if compute else None
        with _windowing_stops_the_run():
            prepared = prepare_store(plan, owner, new=new, first_windows=first_windows)
        store = prepared.store
        timings = {"planning_s": plan.planning_s, "preparing_s": time.monotonic() - started}
        try:
            with prepared.kept as kept:
                for note in prepared.notes:
                    log.warning("store %s: %s", store.path, note)
                rows = prepared.rows
                result = RunResult(store=store.path, model=config.model or "")
                result.resumed_windows = int(np.count_nonzero(store.read_status()[rows] != PENDING))
                detections = Detections(plan, store, prepared.entries, result, kept, config.flush_interval_s)
                phase = time.monotonic()
                while compute and prepared.unregistered and result.resumed_windows == len(rows):
                    # Nothing to ask yet (the first signals' windows are all in the store): window more
                    # here, and start Ray only if some window is new (a renamed copy asks nothing).
                    with _windowing_stops_the_run():
                        prepared.register_next(plan)
                    rows = prepared.rows
                    result.resumed_windows = int(np.count_nonzero(store.read_status()[rows] != PENDING))
                if compute and result.resumed_windows < len(rows):
                    _compute(plan, model_path, prepared, result, on_progress, stop, ray_options or {}, detections, pool)
                timings["windows_s"] = time.monotonic() - phase
                result.unregistered = [p.name for p in prepared.unregistered]  # a stop came first
                rows = prepared.rows  # with the signals added as the run went
                result.total_windows = len(rows)
                result.n_signals = len(prepared.entries)
                result.signal_windows = sum(e.n_windows for e in prepared.entries)
                result.added_windows = prepared.added_windows
                result.failed_windows = int(np.count_nonzero(store.read_status()[rows] == FAILED))
                phase = time.monotonic()
                if result.stopped:
                    detections.cancel()
                else:
                    detections.finish(stop)
                timings["post_processing_s"] = time.monotonic() - phase
                result.missing = [p.name for p in plan.plans if p.name not in result.signals]
                if result.first_batch_at is not None:
                    timings["first_batch_s"] = result.first_batch_at - started_at
                if result.unanswered:
                    warnings.warn(_unanswered_message(result), SigrayWarning, stacklevel=2)
                result.timings = {name: round(seconds, 3) for name, seconds in timings.items()}
        finally:
            store_lease.release(store.storage, owner)
    result.elapsed_s = time.monotonic() - started
    return result


def _compute(
    plan, model_path, prepared, result, on_progress, stop: StopRequested, ray_options, detections: Detections, pool
) -> None:
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
        holds_model = getattr(engine_class(config.engine), "holds_model", True)
        gpus = 1 if holds_model and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    settings = CoordinatorSettings(
        store_path=prepared.store.path,
        owner=prepared.lease.owner,
        lease_ttl_s=config.store_lease_s,
        batch_size=config.batch_size,
        max_attempts=config.max_attempts,
        seed=config.seed,
        flush_interval_s=config.flush_interval_s,
        lease_timeout_s=config.lease_timeout_s,
        signals=tuple((p.name, p.digest) for p in plan.plans),
    )
    # The run's state lives beside the driver: a lost GPU node then costs only its worker's
    # leases; if the driver's node itself dies, Ray restarts these anywhere.
    beside_driver = {
        "num_cpus": 0,
        "max_restarts": -1,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True),
    }
    coordinator = (
        ray.remote(Coordinator)
        .options(
            name=f"sigray-coordinator-{prepared.lease.owner[:12]}",
            runtime_env={"env_vars": client_env()},  # how to reach an object store
            **beside_driver,
        )
        .remote(settings)
    )
    limits = rate_limits(config.engine, config.engine_options)
    schedule = None
    if limits:  # one schedule for every worker: the provider's limits hold for the run
        # A restart forgets the schedule: at worst one burst early.
        name = f"sigray-rate-limits-{prepared.lease.owner[:12]}"
        schedule = ray.remote(Schedule).options(name=name, **beside_driver).remote(limits)
    spec = EngineSpec(config.engine, model_path, dict(config.engine_options))
    worker_settings = WorkerSettings(plan.sampling, plan.answers, config.constrained, schedule)
    worker_options = {
        "num_gpus": gpus,
        "num_cpus": config.cpus_per_worker,
        "max_restarts": 0,
        "runtime_env": {"env_vars": _worker_env(config.engine_options)},
    }
    kept = pool.take(spec, worker_options, config.workers) if pool is not None else {}

    def joined(added: AddedSignals) -> None:
        result.resumed_windows += added.settled
        prepared.store.refresh()  # the coordinator wrote them

    # Windowing and post-processing go to Ray tasks when CPUs are left beside the workers'.
    detections.in_tasks = tasks.use_tasks(len(plan.plans), busy_cpus=config.workers * config.cpus_per_worker)
    feed = SignalFeed(plan, prepared, coordinator, joined, in_tasks=detections.in_tasks)
    supervisor = _Supervisor(coordinator, worker_options, spec, worker_settings, config, kept)
    try:

        def between_checks() -> bool:
            more = feed.step()  # windowing here goes on at once, between checks
            detections.during_run()
            return more

        final = supervisor.supervise(stop, on_progress, between_checks, lambda: feed.pending + detections.pending)
        idle = supervisor.shutdown(keep=pool is not None)  # a clean end: engines may serve the next run
    except KeyboardInterrupt:  # a second Ctrl-C: quit at once
        supervisor.shutdown(graceful=False)
        raise
    except BaseException as exc:
        detections.cancel()
        supervisor.save()
        # A signal that stopped the run leaves the engines sound: the caller's next attempt may use them.
        keep = pool is not None and isinstance(exc, SignalStoppedRun)
        idle = supervisor.shutdown(keep=keep)
        if keep:
            pool.keep(spec, worker_options, idle)
        raise
    finally:
        feed.cancel()  # windowing tasks left by a stop or an error (none after a clean end)
        if schedule is not None:
            ray.kill(schedule, no_restart=True)
    if pool is not None:
        pool.keep(spec, worker_options, idle)
    result.computed_windows = final.done + final.failed - result.resumed_windows
    result.retries = final.retries
    result.requeued = final.requeued
    result.windows_per_s = final.windows_per_s
    result.first_batch_at = supervisor.first_batch_at or final.first_batch_at
    result.prompt_tokens_mean, result.prompt_tokens_max = final.prompt_tokens_mean, final.prompt_tokens_max
    result.workers_replaced = supervisor.replaced
    result.workers_reused = supervisor.reused
    result.stopped = not final.finished


class _Supervisor:
    """Keeps ``n_workers`` workers serving the coordinator until the run ends."""

    def __init__(
        self,
        coordinator,
        worker_options: dict,
        spec: EngineSpec,
        worker_settings: WorkerSettings,
        config,
        kept: dict[str, object] | None = None,
    ):
        self.coordinator = coordinator
        self.lease_timeout_s = config.lease_timeout_s
        self.load_timeout_s = config.load_timeout_s
        self.killed: dict[str, str] = {}  # workers the supervisor killed, and why
        self.worker_options = worker_options
        self.spec = spec
        self.worker_settings = worker_settings
        self.workers: dict[str, object] = {}
        self.idle: dict[str, object] = {}  # workers whose run ended cleanly: their engine can serve another run
        self.starting: dict[object, str] = {}  # workers waiting for resources or their process
        self.loading: dict[object, str] = {}  # workers loading their engine
        self.up_at: dict[str, float] = {}  # when each worker's process was seen up (driver's clock)
        self.ready_at: dict[str, float] = {}  # when each worker was seen ready to serve
        self.runs: dict[object, str] = {}
        self.placed: set[str] = set(kept or {})  # workers whose process was ever up (an engine to close)
        self.created_at = time.monotonic()
        self.first_batch_at: float | None = None  # Unix time the run's first batch was leased, as first seen
        self.warned_placement = False
        self.replaced = 0
        self.reused = len(kept or {})
        # Workers lost in a row with no window settled in between: a crash loop (an engine
        # that cannot load), not preemptions. Progress between losses resets the count.
        self.lost_in_a_row = 0
        self.settled_at_last_loss = -1
        self.max_lost_in_a_row = 3 * config.workers + 3
        for worker_id, worker in (kept or {}).items():  # engines loaded by an earlier run: ready now
            self.up_at[worker_id] = self.ready_at[worker_id] = time.monotonic()
            self._serve(worker_id, worker)
        for _ in range(config.workers - self.reused):
            self._start_worker()

    def _start_worker(self) -> None:
        worker_id = uuid.uuid4().hex[:8]
        import ray

        # Named, so `ray list actors` shows whose it is (and fault tests can find it).
        actor = ray.remote(Worker).options(name=f"sigray-worker-{worker_id}", **self.worker_options)
        worker = actor.remote(worker_id, self.spec)
        # Called in this order: up once its process is placed, ready once its engine is loaded.
        self.starting[worker.__ray_ready__.remote()] = worker_id
        self.loading[worker.load.remote()] = worker_id
        self._serve(worker_id, worker)

    def _serve(self, worker_id: str, worker) -> None:
        self.workers[worker_id] = worker
        self.runs[worker.run.remote(self.coordinator, self.worker_settings)] = worker_id

    def supervise(
        self, stop: StopRequested, on_progress, between_checks: Callable[[], bool], tasks: Callable[[], list]
    ) -> Progress:
        """Until every window is settled and saved, or a stop; ``between_checks`` runs after each
        second's checks (windowing signals still to add, post-processing the signals that
        finished), at once again while it returns True, and as soon as one of ``tasks()`` (Ray
        tasks doing that work) ends."""
        import ray

        finished = self.coordinator.wait_finished.remote()
        busy = False
        while True:
            waits = [finished, *self.runs, *tasks()]
            ready, _ = ray.wait(waits, num_returns=1, timeout=0 if busy else _POLL_S)
            ready = [ref for ref in ready if ref == finished or ref in self.runs]
            if finished in ready:
                try:
                    progress = ray.get(finished)
                except ray.exceptions.RayActorError:
                    finished = self.coordinator.wait_finished.remote()  # it restarted; ask the new one
                    continue
                self._check_saved()
                return progress
            for ref in ready:
                self._worker_ended(ref)
            self._note_ready()
            health = self._ask(self.coordinator.health.remote(), None)
            if health is not None:
                self._check(health)
            if stop.requested:
                log.warning("stop requested: flushing and exiting; run it again to resume")
                progress = ray.get(self.coordinator.stop.remote())
                self._check_saved()
                return progress
            progress = self._ask(self.coordinator.progress.remote(), None)
            if progress is not None:  # the first incarnation's: a restarted coordinator's first batch is later
                self.first_batch_at = self.first_batch_at or progress.first_batch_at
            if progress is not None and on_progress is not None:
                on_progress(progress)
            busy = between_checks()

    def _check_saved(self) -> None:
        """A run that ended (every window answered, or a stop) still failed if its last flush did:
        the answers are then in the coordinator's memory only, and the store says pending."""
        health = self._ask(self.coordinator.health.remote(), None)
        if health is not None:
            _raise_if_fatal(health.fatal)

    def _check(self, health: Health) -> None:
        """Stop on a fatal store error; kill workers that stopped answering (replaced when their run ends)."""
        import ray

        _raise_if_fatal(health.fatal)
        hung = {w: "its lease timed out" for w in health.timed_out}
        # A ready worker calls the coordinator within one batch. One that has not called this
        # incarnation a lease timeout after both were up is stopped or hung, whether or not it
        # holds a lease a restart forgot. Loading an engine has a timeout of its own.
        now = time.monotonic()
        coordinator_up_at = now - health.uptime_s
        for worker_id, ready_at in self.ready_at.items():
            if worker_id not in health.seen and now > max(ready_at, coordinator_up_at) + self.lease_timeout_s:
                hung.setdefault(worker_id, "it has not called the coordinator for a lease timeout")
        for worker_id, up_at in self.up_at.items():
            if worker_id not in self.ready_at and now > up_at + self.load_timeout_s:
                hung.setdefault(worker_id, f"its engine did not load in {self.load_timeout_s:g} s")
        for worker_id, why in hung.items():
            if worker_id in self.workers and worker_id not in self.killed:
                log.warning("worker %s stopped answering (%s); replacing it", worker_id, why)
                self.killed[worker_id] = why
                ray.kill(self.workers[worker_id], no_restart=True)

    def _worker_ended(self, ref) -> None:
        import ray

        worker_id = self.runs.pop(ref)
        worker = self.workers.pop(worker_id, None)
        self.up_at.pop(worker_id, None)
        self.ready_at.pop(worker_id, None)
        try:
            ray.get(ref)
            if worker is not None:
                self.idle[worker_id] = worker  # it ran out of work: the run is finishing or stopping
            return
        except ray.exceptions.RayError as exc:  # its process died, or its engine failed (EngineFailed)
            cause = self.killed.pop(worker_id, None) or one_line(exc)
        if worker is not None:
            # Ray may declare an unresponsive (frozen) process dead while it still holds its
            # CPUs and GPUs; make sure it is gone before its replacement needs them.
            ray.kill(worker, no_restart=True)
        requeued = self._requeue(worker_id)
        log.warning("worker %s was lost (%s); %s windows requeued", worker_id, cause, requeued)
        progress = self._ask(self.coordinator.progress.remote(), None)
        settled = -1 if progress is None else progress.done + progress.failed
        self.lost_in_a_row = 1 if settled > self.settled_at_last_loss else self.lost_in_a_row + 1
        self.settled_at_last_loss = max(settled, self.settled_at_last_loss)
        if self.lost_in_a_row > self.max_lost_in_a_row:
            raise SigrayError(
                f"workers keep failing ({self.lost_in_a_row} lost with no progress in between); last error: {cause}"
            )
        self.replaced += 1
        self._start_worker()

    def _note_ready(self) -> None:
        """Record when workers' processes came up and when their engines loaded (or failed to:
        then their run ends too, and ``_worker_ended`` replaces them)."""
        for pending, seen_at in ((self.starting, self.up_at), (self.loading, self.ready_at)):
            for worker_id in _resolved(pending):
                if worker_id in self.workers:
                    seen_at[worker_id] = time.monotonic()
        self.placed.update(self.up_at)
        if not self.placed and not self.warned_placement:
            self._warn_if_unplaced()

    def _warn_if_unplaced(self) -> None:
        """Workers waiting long for CPUs or GPUs are waiting on something else that holds them: say what."""
        import ray

        if time.monotonic() - self.created_at < _PLACEMENT_WARNING_S:
            return
        self.warned_placement = True
        free = ray.available_resources()
        log.warning(
            "no worker could start in %.0f s: each needs %s CPU(s) and %s GPU(s), the cluster has %.4g CPU(s) and "
            "%.4g GPU(s) free. Other runs hold the rest (in a notebook: close() other SigLLM objects, or "
            "ray.shutdown()); the run waits for them.",
            _PLACEMENT_WARNING_S,
            self.worker_options["num_cpus"],
            self.worker_options["num_gpus"],
            free.get("CPU", 0.0),
            free.get("GPU", 0.0),
        )

    def _requeue(self, worker_id: str) -> int:
        """Have the coordinator requeue a lost worker's windows; returns how many.

        A call the coordinator may not have run (unreachable for a moment, as when a node
        dies) is repeated, or those windows would wait out their lease timeout; repeating
        is safe, as a second call finds nothing left. A restarted coordinator requeued
        everything not done when it rebuilt itself: nothing to do.
        """
        import ray

        deadline = time.monotonic() + RECONNECT_S
        while True:
            try:
                return ray.get(self.coordinator.worker_lost.remote(worker_id), timeout=60)
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    return 0
                time.sleep(1.0)  # back off while the coordinator is unreachable
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                return 0

    def _ask(self, ref, fallback):
        """A coordinator call that tolerates its restart."""
        import ray

        try:
            return ray.get(ref, timeout=60)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            return fallback

    def save(self) -> None:
        """Stop the coordinator with a flush before the run ends on an error: what was answered
        stays answered (best effort; a store that cannot be written is the error raised)."""
        import ray

        try:
            ray.get(self.coordinator.stop.remote(grace_s=5.0), timeout=60)
        except ray.exceptions.RayError:
            pass

    def shutdown(self, keep: bool = False, graceful: bool = True) -> dict[str, object]:
        """End every actor of the run; with ``keep``, return the workers whose run ended cleanly
        (waiting up to ``CLOSE_S`` for runs still ending) instead of closing them. Engines get
        ``CLOSE_S`` to exit (``graceful``; not after a second Ctrl-C); workers never placed none."""
        import ray

        self._note_ready()  # workers that came up since the last check (the feed may have held the loop)
        ending = [ref for ref, worker_id in self.runs.items() if worker_id in self.placed]
        if keep and ending:
            ended, _ = ray.wait(ending, num_returns=len(ending), timeout=CLOSE_S)
            for ref in ended:
                worker_id = self.runs.pop(ref)
                try:
                    ray.get(ref)
                    self.idle[worker_id] = self.workers.pop(worker_id)
                except ray.exceptions.RayError:
                    pass  # closed below with the others
        kept = dict(self.idle) if keep else {}
        ending = self.workers if keep else {**self.idle, **self.workers}
        placed = [w for worker_id, w in ending.items() if worker_id in self.placed]
        close_workers(placed if graceful else [])  # closes and kills them
        for worker in ending.values():  # the rest at once (never placed, no time to close); twice is harmless
            ray.kill(worker, no_restart=True)
        ray.kill(self.coordinator, no_restart=True)
        return kept


@contextlib.contextmanager
def _windowing_stops_the_run():
    """A signal sigllm cannot window once the store is being prepared stops the run as one that
    started does (exit 1, not 2: the store was written; ``sigray.benchmark`` goes on without it)."""
    try:
        yield
    except WindowingError as exc:
        raise stopped_by(exc) from None


def _unanswered_message(result: RunResult) -> str:
    names = result.unanswered
    reasons: dict[str, int] = {}
    for name in names:
        for reason, count in result.signals[name].failure_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + count
    common = "; ".join(f"{count}x {reason}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    return (
        f"no valid answer for any window of {len(names)} signal(s) ({', '.join(names[:20])}): nothing was "
        f"detected there ({common}). Each window was asked up to max_attempts times: check the model and the "
        "answers it gives (`sigray status` says why windows failed)."
    )


def _raise_if_fatal(fatal: str | None) -> None:
    if fatal:
        raise SigrayError(f"the run stopped: {fatal}. Fix the cause and run the same command to resume.")


def _resolved(pending: dict) -> list:
    """Pop and return the values of ``pending`` (object refs -> values) whose refs resolved."""
    import ray

    if not pending:
        return []
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
    return [pending.pop(ref) for ref in ready]


def _ensure_ray(options: dict) -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):  # under `ray job submit`, or a user's cluster
        init_ray_keeping_stop(lambda: ray.init(address="auto", **options))
    else:
        token_notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
        token_notice.addFilter(_default_token_auth_notice)
        try:
            init_ray_keeping_stop(lambda: ray.init(include_dashboard=False, **options))
        finally:
            token_notice.removeFilter(_default_token_auth_notice)


def _default_token_auth_notice(record: logging.LogRecord) -> bool:
    """Ray 2.60 says, starting any local cluster, that token authentication is on (its default);
    in every run's output, and a notebook's, that is noise. A warning that it is off still shows."""
    return not record.getMessage().startswith("Token authentication is enabled")
