"""A worker: one engine, pulling batches from the coordinator until the run is done.

It never writes the store. It keeps several batches in the engine at once (enough to fill
its ``concurrency``, plus one waiting) and asks for the next before it needs it, so the
engine never waits for a round trip, a check or a report; it checks each batch as it
finishes and sends the report without waiting for it. A coordinator that restarts is
waited for; a report the restarted coordinator no longer knows is harmless (see the
coordinator's invariants).
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

import numpy as np

from sigray.engines import Completion, Sampling, load_engine
from sigray.messages import REFUSED, Batch, BatchReport
from sigray.pipelines.answers import AnswerFormat, sampling_for

log = logging.getLogger(__name__)
RECONNECT_S = 120.0


@dataclass(frozen=True)
class EngineSpec:
    """What a worker loads. Workers of equal specs serve one run after another with the
    engine they loaded (``sigray.pool``)."""

    engine: str
    model: str
    engine_options: dict


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs for one run: how to ask for answers, and check them.

    ``sampling`` is the run's; each window's ``max_tokens`` and regex (when
    ``constrained``) come from its own limits (``AnswerFormat.limits``).
    """

    sampling: Sampling
    answers: AnswerFormat
    constrained: bool = True
    schedule: object = None  # the run's shared rate-limit schedule (a Ray actor), when the engine has limits

    def sampling_for(self, max_digits: int, max_tokens: int) -> Sampling:
        return sampling_for(self.sampling, self.answers, max_digits, max_tokens, self.constrained)


def validate(
    answers: AnswerFormat, completions: list[Completion], max_digits: list[int] | None = None
) -> tuple[list[list[str] | None], np.ndarray, list[str], list[bool]]:
    """Read and check every sample of every window; a window is valid when all its samples are.
    ``max_digits``: each window's limit (``AnswerFormat.limits``), which some formats read by.

    Returns the kept texts (sigllm's responses, ``answers.response``, what its parsers
    receive; None when invalid), the parsed values, a reason per invalid window, and
    whether it is final: the engine refused it for good, so retrying is pointless.
    """
    n = max((len(c.texts) for c in completions), default=0)
    values = np.full((len(completions), n, answers.horizon), np.nan, dtype=np.float32)
    kept: list[list[str] | None] = []
    reasons, final = [], []
    for i, completion in enumerate(completions):
        reason = REFUSED + completion.refused if completion.refused else ""
        samples = [answers.response(text) for text in completion.texts]
        for k, text in enumerate(samples):
            verdict = answers.check(text, cut=completion.cut(k), max_digits=max_digits[i] if max_digits else 0)
            if not verdict.ok:
                reason = f"sample {k}: {verdict.reason}"
                break
            values[i, k] = verdict.values
        kept.append(None if reason else list(samples))
        reasons.append(reason)
        final.append(completion.permanent)
    return kept, values, reasons, final


class Worker:
    """Holds one engine; ``run`` serves a run's batches until its coordinator says stop, and
    may be called again for another run (the engine stays loaded)."""

    def __init__(self, worker_id: str, spec: EngineSpec):
        self.worker_id = worker_id
        self.spec = spec
        self.engine = None
        self.load_error: BaseException | None = None
        self.coordinator = None
        self.settings: WorkerSettings | None = None
        self.windows_done = 0
        self._unavailable_since: float | None = None  # when the coordinator stopped answering

    def load(self) -> None:
        """Load the engine: a call of its own, so the driver can time it apart from the wait for resources."""
        try:
            self.engine = load_engine(self.spec.engine, self.spec.model, self.spec.engine_options)
        except Exception as exc:  # noqa: BLE001 - any engine's error, made portable to the driver
            self.load_error = _portable(exc)  # `run`, queued behind this call, ends with it
            raise self.load_error from None

    def close(self) -> None:
        """Free the engine (its processes, its GPU memory) before the actor is killed."""
        if self.engine is not None:
            self.engine.close()

    def run(self, coordinator, settings: WorkerSettings) -> int:
        """Serve ``coordinator``'s batches until its run finishes or stops; returns windows answered."""
        if self.engine is None:
            raise self.load_error or RuntimeError("Worker.run before Worker.load")
        self.coordinator, self.settings, self.windows_done = coordinator, settings, 0
        self._sampling = functools.lru_cache(maxsize=256)(settings.sampling_for)
        if settings.schedule is not None:
            self.engine.share_schedule(settings.schedule.reserve.remote)  # its refs are awaitable
        try:
            return self._serve()
        except Exception as exc:  # noqa: BLE001 - any engine's error, made portable to the driver
            raise _portable(exc) from None

    def _serve(self) -> int:
        lease: Future | None = self._lease()
        in_flight: dict[Future, Batch] = {}  # in the order submitted
        while lease is not None or in_flight:
            waiting = [*in_flight, lease] if lease is not None and self._wants_more(in_flight) else [*in_flight]
            for future in wait(waiting, return_when=FIRST_COMPLETED).done:
                if future is lease:
                    lease = self._start(lease, in_flight)
                else:
                    self._report(in_flight.pop(future), future.result())
        return self.windows_done

    def _wants_more(self, in_flight: dict[Future, Batch]) -> bool:
        """Another batch, while those before the newest do not fill the engine (at least two in flight)."""
        sizes = [len(batch.windows) for batch in in_flight.values()]
        return len(sizes) < 2 or sum(sizes[:-1]) < self.engine.concurrency

    def _lease(self) -> Future:
        return self.coordinator.lease_batch.remote(self.worker_id).future()

    def _start(self, lease: Future, in_flight: dict[Future, Batch]) -> Future | None:
        """Submit the leased batch and ask for the next; None when the coordinator says stop.
        While the coordinator restarts, ask again for a while (``RECONNECT_S``)."""
        import ray

        try:
            batch: Batch | None = lease.result()
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            self._unavailable_since = self._unavailable_since or time.monotonic()
            if time.monotonic() - self._unavailable_since > RECONNECT_S:
                raise
            log.warning("worker %s: coordinator unavailable, asking again", self.worker_id)
            time.sleep(1.0)  # the coordinator is restarting; back off before asking again
            return self._lease()
        self._unavailable_since = None
        if batch is None:
            return None
        samplings = [self._sampling(d, t) for d, t in zip(batch.max_digits, batch.max_tokens)]
        in_flight[self.engine.submit(batch.prompts, samplings, batch.seeds)] = batch
        return self._lease()

    def _report(self, batch: Batch, completions: list[Completion]) -> None:
        kept, values, reasons, final = validate(self.settings.answers, completions, batch.max_digits)
        self.coordinator.report.remote(
            BatchReport(
                batch.lease_id,
                self.worker_id,
                batch.windows,
                kept,
                values,
                reasons,
                final,
                [c.prompt_tokens for c in completions],
            )
        )
        self.windows_done += len(batch.windows)


class EngineFailed(RuntimeError):
    """An engine's error as the driver receives it: a client library's exception (an HTTP
    client's, which needs its request to be rebuilt) may not unpickle in another process."""


def _portable(exc: Exception) -> Exception:
    import ray

    if isinstance(exc, (ray.exceptions.RayError, EngineFailed)):
        return exc
    return EngineFailed(f"{type(exc).__name__}: {exc}")
