"""sigllm's post-processing per signal on the stored answers, saved in the run's result set.

A signal is post-processed as soon as the store holds every one of its windows settled:
during the run (the supervisor calls ``Detections.during_run`` between its checks), so
``sigray results`` and ``sigray status`` show finished signals while the others run and a
crash loses no finished post-processing; the rest at the run's end (``finish``). A signal
whose result for this setting (and its data) is saved already is read, not computed again.
Every write is fenced by the lease; results live in their own arrays (``results/<set>/``),
apart from the windows the coordinator writes.

When a run has many signals and its Ray cluster has CPUs to spare (``sigray.tasks``), each
one's post-processing (sigllm's preprocessing again, then its post-processing on the answers
read from the store) is a Ray task, during the run and at its end; the driver only saves what
the tasks return, so the store keeps one writer (issue 16.2). Otherwise (few signals, a small
machine, ``sigray detect``, a run with nothing to generate) it runs in the driver.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sigray import tasks
from sigray.errors import SigrayError, one_line
from sigray.lease_keeper import KeptLease
from sigray.pipelines.sigllm_pipeline import settings_changes
from sigray.plan import PlannedSignal, RunPlan
from sigray.signals import Signal, signal_from_store
from sigray.stopping import StopRequested
from sigray.store import DONE, FAILED, PENDING, RunStore, SignalEntry, result_sets

if TYPE_CHECKING:
    from sigray.runner import RunResult

log = logging.getLogger(__name__)


@dataclass
class SignalResult:
    """One signal's anomalies in sigllm's shape, and what could not be computed."""

    name: str
    anomalies: pd.DataFrame  # start, end, severity
    failed_windows: list[int]  # positions within the signal left without an answer
    n_windows: int
    forecast: np.ndarray | None = None
    forecast_index: np.ndarray | None = None
    failure_reasons: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:  # a summary: the forecast of a long signal is thousands of numbers
        forecast = "" if self.forecast is None else f", forecast of {len(self.forecast)} points"
        return (
            f"SignalResult({self.name!r}: {len(self.anomalies)} anomalies, {self.n_windows} windows, "
            f"{len(self.failed_windows)} failed{forecast})"
        )


class Detections:
    """The run's result set, filled signal by signal into ``result.signals``."""

    def __init__(
        self,
        plan: RunPlan,
        store: RunStore,
        entries: list[SignalEntry],
        result: RunResult,
        kept: KeptLease,
        check_every_s: float,
    ):
        self.plan, self.store, self.result, self.kept = plan, store, result, kept
        self.entries = entries  # registered signals: the run adds to it as its signals join (``sigray.feed``)
        self.planned = {p.name: p for p in plan.plans}
        self.check_every_s = check_every_s
        self.previous = result_sets.find_set(store.group, None)
        self.sid = result_sets.set_id(plan.detection_fingerprint)
        self._next_check = 0.0
        self._tasks: dict = {}  # Ray task -> (signal plan, entry, rows, settled)
        self.in_tasks = False  # during the run (its end decides again, its workers gone): set by the runner
        self._failed_during_run: set[str] = set()  # tried again, and then raised, at the end

    @property
    def pending(self) -> list:
        """The post-processing tasks running: the supervisor wakes when one ends."""
        return list(self._tasks)

    def during_run(self, budget_s: float = 1.0) -> None:
        """Post-process signals the store now holds settled: in Ray tasks when the cluster has
        CPUs to spare (``sigray.tasks``), else here, for about ``budget_s`` at most (the
        supervisor's checks wait meanwhile); again at once while any is left, else after
        ``check_every_s`` (a flush interval: the store changes no faster)."""
        if self._tasks:
            self._collect(timeout_s=0, during_run=True)
        now = time.monotonic()
        left = self._left()
        if now < self._next_check or not left:
            return
        status = self.store.read_status()
        room = tasks.in_flight() if self.in_tasks else 0
        for signal_plan, entry in left:
            if entry.name in self._failed_during_run:
                continue
            rows = self.store.signal_rows(entry)
            settled = status[rows]
            if (settled == PENDING).any():
                continue
            if len(self._tasks) >= room if self.in_tasks else time.monotonic() - now > budget_s:
                return  # more to do: the next call goes on
            try:
                self._start(signal_plan, entry, rows, settled, in_task=self.in_tasks)
            except SigrayError as exc:  # sigllm failed on this signal: the windows go on, the end says it
                self._failed_during_run.add(entry.name)
                log.warning("%s (tried again at the end of the run)", exc)
        self._next_check = time.monotonic() + self.check_every_s

    def finish(self, stop: StopRequested) -> None:
        """Every signal not done yet; one with windows still pending is left without a result
        (the runner lists it ``missing``). A stop request (SIGTERM, deadline) ends it between
        two signals: what is saved stays."""
        status = self.store.read_status()
        left = self._left()
        pending = set()
        # As during the run, or now that the workers are gone (Ray frees their CPUs a moment after).
        in_tasks = self.in_tasks or tasks.use_tasks(len(left) + len(self._tasks))
        room = tasks.in_flight() if in_tasks else 0
        for signal_plan, entry in left:
            if stop.requested:
                break
            rows = self.store.signal_rows(entry)
            settled = status[rows]
            if (settled == PENDING).any():
                pending.add(entry.name)
                continue
            while in_tasks and len(self._tasks) >= room and not stop.requested:
                self._collect(timeout_s=1.0)
            self._start(signal_plan, entry, rows, settled, in_task=in_tasks)
        while self._tasks:
            if stop.requested:
                self.cancel()
                self.result.stopped = True
                return
            self._collect(timeout_s=1.0)
        if stop.requested and any(entry.name not in pending for _, entry in self._left()):
            self.result.stopped = True  # a stop after the last signal's result stops nothing
            return
        order = {name: i for i, name in enumerate(self.planned)}
        self.result.signals = dict(sorted(self.result.signals.items(), key=lambda item: order[item[0]]))
        if self.previous is not None and self.result.result_set is not None:
            if self.previous.id != self.result.result_set.id:
                self.result.detection_changes = settings_changes(self.previous.detection, self.plan.detection)

    def _left(self):
        """Signals without a result yet and none on the way."""
        busy = {task[1].name for task in self._tasks.values()}
        done = self.result.signals
        return [(self.planned[e.name], e) for e in self.entries if e.name not in done and e.name not in busy]

    def _start(self, signal_plan: PlannedSignal, entry: SignalEntry, rows, settled, in_task: bool) -> None:
        """A saved result is read at once; else a Ray task computes it, or the driver does."""
        saved = result_sets.read_result(self.store.group, self.sid, entry)
        if saved is not None:
            self.result.reused_results += 1
            self._save(entry, rows, settled, saved, computed=False)
            return
        if in_task:  # the task reads the signal's data from the store
            arguments = (self.plan.pipeline, self.plan.normal, self.store.path, entry, rows, settled)
            task = tasks.remote(_detect_signal).remote(*arguments)
            self._tasks[task] = (signal_plan, entry, rows, settled)
        else:
            if not signal_plan.holds_data:  # dropped (the memory budget): the data its windows were asked of
                signal_plan.reload_from(functools.partial(_registered_signal, self.store, entry))
            try:
                arrays = detect(self.plan.pipeline, signal_plan.preprocessed, self.store, rows, settled)
            finally:
                signal_plan.done_with()
            self._save(entry, rows, settled, arrays)

    def _collect(self, timeout_s: float, during_run: bool = False) -> None:
        """Save the results of finished tasks. A failure (sigllm's, naming the signal; or the
        task's process) stops the run at its end; during the run, the signal is tried again then."""
        import ray

        ready, _ = ray.wait(list(self._tasks), num_returns=len(self._tasks), timeout=timeout_s)
        for task in ready:
            signal_plan, entry, rows, settled = self._tasks.pop(task)
            try:
                outcome = ray.get(task)
            except ray.exceptions.RayError as exc:  # the task's process died, or the store could not be read
                outcome = f"post-processing signal {entry.name!r} failed in a Ray task: {one_line(exc)}"
            if isinstance(outcome, str) and during_run:
                self._failed_during_run.add(entry.name)
                log.warning("%s (tried again at the end of the run)", outcome)
            elif isinstance(outcome, str):
                self.cancel()
                raise SigrayError(outcome)
            else:
                self._save(entry, rows, settled, outcome)

    def cancel(self) -> None:
        """Cancel the post-processing tasks running (a stop, an error): their signals are done again next time."""
        if not self._tasks:
            return
        import ray

        for task in self._tasks:
            ray.cancel(task, force=True)
        self._tasks.clear()

    def _save(self, entry: SignalEntry, rows, settled, arrays: dict[str, np.ndarray], computed: bool = True) -> None:
        """Keep one signal's result (saved first when computed here); the set is listed (its
        metadata written) once it holds a result, so a setting that fails leaves no empty set."""
        if computed:
            self.kept.check()
            result_sets.write_result(self.store.group, self.sid, entry, arrays)
        if self.result.result_set is None:
            self.kept.check()
            name = self.plan.pipeline.detection_name(self.store.meta.get("pipeline_base_spec"))
            self.result.result_set = result_sets.ensure_set(
                self.store.group, self.plan.detection_fingerprint, name, self.plan.detection
            )
        failed = np.flatnonzero(settled == FAILED)
        counts = {}
        if failed.size:
            reasons = self.store.read_reasons(int(rows.min()), int(rows.max()) + 1)
            counts = dict(collections.Counter(str(reasons[r - rows.min()]) for r in rows[failed].tolist()))
        self.result.signals[entry.name] = SignalResult(
            name=entry.name,
            anomalies=pd.DataFrame({"start": arrays["start"], "end": arrays["end"], "severity": arrays["severity"]}),
            failed_windows=failed.tolist(),
            n_windows=entry.n_windows,
            forecast=arrays.get("forecast"),
            forecast_index=arrays.get("forecast_index"),
            failure_reasons=counts,
        )


def _registered_signal(store: RunStore, entry: SignalEntry) -> Signal:
    """The data ``entry``'s windows were asked of, as the store holds it (its file may have changed or gone since)."""
    return signal_from_store(entry.name, *store.read_signal(entry))


def _detect_signal(pipeline, normal, store_path: str, entry: SignalEntry, rows: np.ndarray, settled: np.ndarray):
    """One signal's result arrays, or why sigllm failed on it (a str: raised by the driver); a Ray task's."""
    store = RunStore.open(store_path, read_only=True)
    signal_plan = pipeline.plan(_registered_signal(store, entry), normal)
    try:
        return detect(pipeline, signal_plan, store, rows, settled)
    except SigrayError as exc:
        return str(exc)


def detect(pipeline, signal_plan, store: RunStore, rows: np.ndarray, settled: np.ndarray) -> dict[str, np.ndarray]:
    """One signal's post-processing; the arrays its result set saves. sigllm's own errors (its
    post-processing on answers it cannot use) end the run with one line naming the signal."""
    first, last = int(rows.min()), int(rows.max()) + 1
    answers = store.read_answers(first, last)
    per_window = [
        [str(text) for text in answers[row - first]] if state == DONE else None
        for row, state in zip(rows.tolist(), settled.tolist())
    ]
    try:
        detection = pipeline.postprocess(signal_plan, per_window)
    except Exception as exc:  # noqa: BLE001 - sigllm's and Orion's code: any error, named, not a traceback
        raise SigrayError(
            f"post-processing signal {signal_plan.signal.name!r} failed in sigllm/Orion ({type(exc).__name__}: "
            f"{exc}); its answers are saved: change the detection settings and run `sigray detect`."
        ) from exc
    arrays = {
        "start": np.asarray(detection.anomalies["start"]),
        "end": np.asarray(detection.anomalies["end"]),
        "severity": np.asarray(detection.anomalies["severity"], dtype="float64"),
        "failed_windows": np.asarray(detection.failed_windows, dtype="int64"),
    }
    if detection.forecast is not None:
        arrays["forecast"] = np.asarray(detection.forecast, dtype="float64")
        arrays["forecast_index"] = np.asarray(detection.forecast_index)
    return arrays
