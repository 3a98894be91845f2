"""sigllm's post-processing per signal on the stored answers, saved in the run's result set.

A signal is post-processed as soon as the store holds every one of its windows settled:
during the run (the supervisor calls ``Detections.during_run`` between its checks), so
``sigray results`` and ``sigray status`` show finished signals while the others run and a
crash loses no finished post-processing; the rest at the run's end (``finish``). A signal
whose result for this setting (and its data) is saved already is read, not computed again.
Every write is fenced by the lease; results live in their own arrays (``results/<set>/``),
apart from the windows the coordinator writes.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sigray import lease as store_lease
from sigray.errors import SigrayError
from sigray.pipelines.sigllm_pipeline import settings_changes
from sigray.plan import PlannedSignal, RunPlan
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


class Detections:
    """The run's result set, filled signal by signal into ``result.signals``."""

    def __init__(
        self,
        plan: RunPlan,
        store: RunStore,
        entries: list[SignalEntry],
        result: RunResult,
        kept: store_lease.KeptLease,
        check_every_s: float,
    ):
        self.plan, self.store, self.entries, self.result, self.kept = plan, store, entries, result, kept
        self.check_every_s = check_every_s
        self.previous = result_sets.find_set(store.group, None)
        self.sid = result_sets.set_id(plan.detection_fingerprint)
        self._next_check = 0.0
        self._failed_during_run: set[str] = set()  # tried again, and then raised, at the end

    def during_run(self, budget_s: float = 1.0) -> None:
        """Post-process signals the store now holds settled, for about ``budget_s`` at most
        (the supervisor's checks wait meanwhile); again at once while any is left, else after
        ``check_every_s`` (a flush interval: the store changes no faster)."""
        now = time.monotonic()
        if now < self._next_check:
            return
        status, _ = self.store.read_state()
        reasons = None
        for signal_plan, entry in self._left():
            if entry.name in self._failed_during_run:
                continue
            rows = self.store.signal_rows(entry)
            settled = status[rows]
            if (settled == PENDING).any():
                continue
            if time.monotonic() - now > budget_s:
                return  # more to do: the next call goes on
            try:
                reasons = self._add(signal_plan, entry, rows, settled, reasons)
            except SigrayError as exc:  # sigllm failed on this signal: the windows go on, the end says it
                self._failed_during_run.add(entry.name)
                log.warning("%s (tried again at the end of the run)", exc)
        self._next_check = time.monotonic() + self.check_every_s

    def finish(self, stop: StopRequested) -> None:
        """Every signal not done yet; one with windows still pending is left ``missing``. A stop
        request (SIGTERM, deadline) ends it between two signals: what is saved stays."""
        status, _ = self.store.read_state()
        reasons = None
        for signal_plan, entry in self._left():
            if stop.requested:
                self.result.stopped = True
                return
            rows = self.store.signal_rows(entry)
            settled = status[rows]
            if (settled == PENDING).any():
                self.result.missing.append(entry.name)
                continue
            reasons = self._add(signal_plan, entry, rows, settled, reasons)
        order = {entry.name: i for i, entry in enumerate(self.entries)}
        self.result.signals = dict(sorted(self.result.signals.items(), key=lambda item: order[item[0]]))
        if self.previous is not None and self.result.result_set is not None:
            if self.previous.id != self.result.result_set.id:
                self.result.detection_changes = settings_changes(self.previous.detection, self.plan.detection)

    def _left(self):
        done = self.result.signals
        return [(p, e) for p, e in zip(self.plan.plans, self.entries) if e.name not in done]

    def _add(self, signal_plan: PlannedSignal, entry: SignalEntry, rows, settled, reasons):
        """Read or compute and save one settled signal's result; the set is listed (its
        metadata written) once it holds a result, so a setting that fails leaves no empty set."""
        failed = np.flatnonzero(settled == FAILED)
        counts = {}
        if failed.size:
            reasons = self.store.read_reasons() if reasons is None else reasons
            counts = dict(collections.Counter(str(reasons[r]) for r in rows[failed].tolist()))
        saved = result_sets.read_result(self.store.group, self.sid, entry)
        if saved is None:
            saved = detect(self.plan.pipeline, signal_plan, self.store, rows, settled)
            self.kept.check()
            result_sets.write_result(self.store.group, self.sid, entry, saved)
        else:
            self.result.reused_results += 1
        if self.result.result_set is None:
            self.kept.check()
            name = self.plan.pipeline.detection_name()
            self.result.result_set = result_sets.ensure_set(
                self.store.group, self.plan.detection_fingerprint, name, self.plan.detection
            )
        self.result.signals[entry.name] = SignalResult(
            name=entry.name,
            anomalies=pd.DataFrame({"start": saved["start"], "end": saved["end"], "severity": saved["severity"]}),
            failed_windows=failed.tolist(),
            n_windows=entry.n_windows,
            forecast=saved.get("forecast"),
            forecast_index=saved.get("forecast_index"),
            failure_reasons=counts,
        )
        return reasons


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
