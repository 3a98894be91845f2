"""A worker: one engine, pulling batches from the coordinator until the run is done.

It never writes the store. It asks for the next batch before generating the current
one, so the engine never waits on a round trip, and it sends reports without waiting
for them. A coordinator that restarts is waited for; a report the restarted
coordinator no longer knows is harmless (see the coordinator's invariants).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from sigray.engines import Sampling, load_engine
from sigray.messages import Batch, BatchReport
from sigray.pipelines.answers import AnswerFormat

log = logging.getLogger(__name__)
_RECONNECT_S = 120.0


@dataclass(frozen=True)
class WorkerSettings:
    engine: str
    model: str
    engine_options: dict
    sampling: Sampling
    answers: AnswerFormat


def validate(answers: AnswerFormat, texts: list[list[str]]) -> tuple[list[list[str] | None], np.ndarray, list]:
    """Read and check every sample of every window; a window is valid when all its samples are.

    Kept texts are sigllm's responses (``answers.response``), what its parsers receive.
    """
    n = max((len(t) for t in texts), default=0)
    values = np.full((len(texts), n, answers.horizon), np.nan, dtype=np.float32)
    kept: list[list[str] | None] = []
    reasons = []
    for i, samples in enumerate(texts):
        reason = ""
        samples = [answers.response(text) for text in samples]
        for k, text in enumerate(samples):
            verdict = answers.check(text)
            if not verdict.ok:
                reason = f"sample {k}: {verdict.reason}"
                break
            values[i, k] = verdict.values
        kept.append(None if reason else list(samples))
        reasons.append(reason)
    return kept, values, reasons


class Worker:
    """Holds one engine; ``run`` serves batches until the coordinator says stop."""

    def __init__(self, worker_id: str, coordinator, settings: WorkerSettings):
        self.worker_id = worker_id
        self.coordinator = coordinator
        self.settings = settings
        self.engine = load_engine(settings.engine, settings.model, settings.engine_options)
        self.windows_done = 0

    def close(self) -> None:
        """Free the engine (its processes, its GPU memory) before the actor is killed."""
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()

    def run(self) -> int:
        """Serve batches until the run finishes or stops; returns windows answered."""
        pending = self.coordinator.lease_batch.remote(self.worker_id)
        while True:
            batch: Batch | None = self._get(pending)
            if batch is None:
                return self.windows_done
            pending = self.coordinator.lease_batch.remote(self.worker_id)  # prefetch
            texts = self.engine.generate(batch.prompts, self.settings.sampling, batch.seeds)
            kept, values, reasons = validate(self.settings.answers, texts)
            report = BatchReport(batch.lease_id, self.worker_id, batch.windows, kept, values, reasons)
            self.coordinator.report.remote(report)
            self.windows_done += len(batch.windows)

    def _get(self, ref):
        """Wait for a coordinator call; while it restarts, ask again for a while."""
        import ray

        deadline = time.monotonic() + _RECONNECT_S
        while True:
            try:
                return ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                if time.monotonic() > deadline:
                    raise
                log.warning("worker %s: coordinator unavailable, asking again", self.worker_id)
                time.sleep(1.0)  # the coordinator is restarting; back off before asking again
                ref = self.coordinator.lease_batch.remote(self.worker_id)
