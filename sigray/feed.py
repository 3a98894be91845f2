"""Signals join a live run (issue 16.3): the driver windows the rest of a run's new signals
with sigllm while the first ones are answered, a batch between the supervisor's checks, and
the coordinator registers them, as the store's one writer while windows run.

Windowing is most of the driver's cost before any window can be asked (about 45 ms a
signal of 20,000 points here); a run of hundreds of signals would keep every engine
waiting for all of it. A batch added to a coordinator that died is added again to its
restarted self: adding is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sigray.errors import InputError, SigrayError
from sigray.messages import AddedSignals
from sigray.plan import RunPlan
from sigray.prepare import REGISTER_WINDOWS, PreparedStore, registration_batches
from sigray.worker import RECONNECT_S

STEP_S = 1.0  # sigllm windowing per step, about: the supervisor's checks wait meanwhile
_CALL_TIMEOUT_S = 300.0  # one batch's registration, on a slow object store


class SignalFeed:
    """Adds ``prepared.unregistered`` to the run's coordinator, one batch per ``step``, and
    records each batch in ``prepared`` (then tells ``on_joined``)."""

    def __init__(self, plan: RunPlan, prepared: PreparedStore, coordinator, on_joined: Callable[[AddedSignals], None]):
        self.prepared = prepared
        self.batches = registration_batches(plan, list(prepared.unregistered), REGISTER_WINDOWS, max_s=STEP_S)
        self.coordinator = coordinator
        self.on_joined = on_joined

    @property
    def done(self) -> bool:
        return not self.prepared.unregistered

    def step(self) -> None:
        """Window the next signals (about ``STEP_S`` of it) and add them to the run. Raises
        SigrayError for a signal sigllm cannot window (naming it), when the store cannot take
        them (the coordinator's reason) or the coordinator stays unreachable."""
        if self.done:
            return
        try:
            batch = next(self.batches)
        except InputError as exc:  # not exit 2: the run had started (README: exit codes)
            raise SigrayError(f"{exc} (The windows answered so far are saved.)") from None
        added = self._add(batch)
        self.prepared.joined(added.entries, added.added_windows)
        self.on_joined(added)

    def _add(self, batch: list) -> AddedSignals:
        import ray

        ref = ray.put(batch)  # sent once, however many times the call is repeated
        deadline = time.monotonic() + RECONNECT_S
        while True:
            try:
                return ray.get(self.coordinator.add_signals.remote(ref), timeout=_CALL_TIMEOUT_S)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                if time.monotonic() > deadline:
                    raise SigrayError(
                        f"the run's coordinator stayed unreachable for {RECONNECT_S:.0f} s while signals were added; "
                        "run the same command again to resume."
                    ) from None
                time.sleep(1.0)  # while Ray restarts it; the call is repeated, which is safe
            except ray.exceptions.RayTaskError as exc:  # the store could not be written
                cause = exc.cause if exc.cause is not None else exc
                raise SigrayError(
                    f"the run stopped: {cause}. Fix the cause and run the same command to resume."
                ) from None
