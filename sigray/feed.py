"""Signals join a live run (issue 16.3): the driver windows the rest of a run's new signals
with sigllm while the first ones are answered, a batch between the supervisor's checks, and
the coordinator registers them, as the store's one writer while windows run.

Windowing is most of the driver's cost before any window can be asked (about 45 ms a
signal of 20,000 points here); a run of hundreds of signals would keep every engine
waiting for all of it. A batch added to a coordinator that died is added again to its
restarted self: adding is idempotent.

With CPUs to spare in the cluster (``sigray.tasks``), Ray tasks window the signals instead,
several at once, and what they return goes from Ray's object store to the coordinator
without passing through the driver: the driver then holds no prompt of them (issue 16.2).
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable

from sigray import tasks
from sigray.errors import ANSWERS_SAVED, InputError, SigrayError, one_line, stopped_by
from sigray.messages import AddedSignals
from sigray.plan import PlannedSignal, RunPlan, new_signals
from sigray.prepare import REGISTER_WINDOWS, PreparedStore, registration_batches
from sigray.worker import RECONNECT_S

STEP_S = 1.0  # sigllm windowing per step, about: the supervisor's checks wait meanwhile
TASK_POINTS = 200_000  # points a windowing task takes (one signal at least): about a second of sigllm
_CALL_TIMEOUT_S = 300.0  # one batch's registration, on a slow object store


class SignalFeed:
    """Adds ``prepared.unregistered`` to the run's coordinator, one batch per ``step``, and
    records each batch in ``prepared`` (then tells ``on_joined``)."""

    def __init__(
        self,
        plan: RunPlan,
        prepared: PreparedStore,
        coordinator,
        on_joined: Callable[[AddedSignals], None],
        in_tasks: bool = False,
    ):
        self.plan = plan
        self.prepared = prepared
        self.coordinator = coordinator
        self.on_joined = on_joined
        self.in_tasks = in_tasks  # Ray tasks window the signals (``sigray.tasks.use_tasks``), not the driver
        self.to_window = collections.deque(prepared.unregistered)  # not given to a task yet
        self.windowing: collections.deque = collections.deque()  # tasks' results, in the run's order
        # Windowed here otherwise, about STEP_S at a time:
        self.batches = registration_batches(plan, list(prepared.unregistered), REGISTER_WINDOWS, max_s=STEP_S)

    @property
    def done(self) -> bool:
        return not self.prepared.unregistered

    @property
    def pending(self) -> list:
        """The windowing task whose signals join next, if any: the supervisor wakes when it ends
        (they join in the run's order, whichever task ends first)."""
        return list(self.windowing)[:1]

    def step(self) -> bool:
        """Window the next signals and add them to the run: here, about ``STEP_S`` of it, or
        by adding what windowing tasks returned and starting more. Returns whether there is
        more to do here at once. Raises SigrayError for a signal sigllm cannot window (naming
        it), when the store cannot take them (the coordinator's reason) or the coordinator
        stays unreachable."""
        if self.done:
            return False
        try:
            if self.in_tasks:
                self._step_in_tasks()
                return False
            batch = next(self.batches)
        except InputError as exc:  # a signal's data gone, or sigllm failing on it; not exit 2: the run started
            raise stopped_by(exc) from None
        import ray

        self._joined(add_signals(self.coordinator, ray.put(batch)))  # put once, however often the call is repeated
        return not self.done

    def cancel(self) -> None:
        """Cancel the windowing tasks running (the run ends before they joined: a stop, an error)."""
        import ray

        for ref in self.windowing:
            ray.cancel(ref, force=True)
        self.windowing.clear()

    def _step_in_tasks(self) -> None:
        import ray

        while self.windowing and ray.wait([self.windowing[0]], timeout=0)[0]:
            self._joined(add_signals(self.coordinator, self.windowing.popleft()))
        room = tasks.in_flight()
        while self.to_window and len(self.windowing) < room:
            signals = self._next_task()
            self.windowing.append(tasks.remote(new_signals).remote(signals, *self._shared))

    @functools.cached_property
    def _shared(self) -> list:
        """The pipeline and the rest every windowing task needs, put in Ray's object store once."""
        import ray

        return [ray.put(part) for part in self.plan.windowing()]

    def _next_task(self) -> list:
        """The data of the next signals to window, about ``TASK_POINTS`` points (the driver
        then drops what it can read again: the task holds its copy)."""
        signals, points = [], 0
        while self.to_window and (not signals or points + self.to_window[0].n_points <= TASK_POINTS):
            signal_plan: PlannedSignal = self.to_window.popleft()
            signals.append(signal_plan.signal)
            points += signal_plan.n_points
            signal_plan.done_with()
        return signals

    def _joined(self, added: AddedSignals) -> None:
        self.prepared.joined(added.entries, added.added_windows)
        self.on_joined(added)


def add_signals(coordinator, ref) -> AddedSignals:
    """The signals ``ref`` holds (put by the driver, or returned by a windowing task), added by
    the run's ``coordinator``; the call is repeated while Ray restarts it. Raises SigrayError
    naming a signal sigllm could not window, why the store could not take them, or a windowing
    task's lost process."""
    import ray

    deadline = time.monotonic() + RECONNECT_S
    while True:
        try:
            return ray.get(coordinator.add_signals.remote(ref), timeout=_CALL_TIMEOUT_S)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise SigrayError(
                    f"the run's coordinator stayed unreachable for {RECONNECT_S:.0f} s while signals were added; "
                    "run the same command again to resume."
                ) from None
            time.sleep(1.0)  # while Ray restarts it; the call is repeated, which is safe
        except ray.exceptions.RayTaskError as exc:  # the store could not be written, or a task not window
            cause = exc.cause if exc.cause is not None else exc
            if isinstance(cause, InputError):  # a signal sigllm cannot window, in a task
                raise stopped_by(cause) from None
            if isinstance(cause, ray.exceptions.RayError):  # a windowing task's process died, retries too
                raise SigrayError(
                    f"windowing signals failed in a Ray task: {one_line(cause)}.{ANSWERS_SAVED} Run the same command "
                    "to resume."
                ) from None
            raise SigrayError(f"the run stopped: {cause}. Fix the cause and run the same command to resume.") from None
