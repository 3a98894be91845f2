"""What crosses process boundaries between the coordinator, workers and the driver.

Plain arrays, strings and frozen dataclasses only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REFUSED = "refused by the engine: "
"""How the reason of a window the engine refused begins (see ``engines.base``)."""


@dataclass(frozen=True)
class AddedSignals:
    """What the coordinator did with signals the driver added to a live run.

    ``entries``: each signal's registry entry, in the order given (a signal already
    registered, as after a retried call, keeps its entry); ``added_windows``: rows the
    window table grew by; ``settled``: windows the run now needs that were already done or
    failed (answered for another signal, or by an earlier run)."""

    entries: list  # [SignalEntry]
    added_windows: int
    settled: int


@dataclass(frozen=True)
class Batch:
    """Windows leased to one worker. ``seeds[i]`` seeds window ``windows[i]`` at this attempt;
    ``max_digits[i]`` and ``max_tokens[i]`` are its answer limits."""

    lease_id: int
    windows: np.ndarray  # int64 rows of the window table
    prompts: list[str]
    seeds: list[int]
    max_digits: list[int]
    max_tokens: list[int]


@dataclass(frozen=True)
class BatchReport:
    """A worker's verdict on every window of one batch.

    ``answers[i]`` holds the sampled texts when window ``windows[i]`` passed validation,
    else ``None`` and ``reasons[i]`` says why; ``final[i]`` when the engine refused it for
    good (the window fails at once). ``values[i]`` are its parsed values.
    """

    lease_id: int
    worker_id: str
    windows: np.ndarray
    answers: list[list[str] | None]
    values: np.ndarray  # float32 [k, n_samples, horizon], NaN where invalid
    reasons: list[str] = field(default_factory=list)
    final: list[bool] = field(default_factory=list)
    prompt_tokens: list[int | None] = field(default_factory=list)  # per window, when the engine counts them


@dataclass(frozen=True)
class Progress:
    """A snapshot of a run, for progress bars and ``sigray status``."""

    total: int
    done: int
    failed: int
    in_flight: int
    retries: int
    requeued: int
    windows_per_s: float
    finished: bool
    prompt_tokens_mean: float | None = None  # per window asked, in the served model's tokens (this session)
    prompt_tokens_max: int | None = None
    signals_to_add: int = 0  # signals of the run still being windowed by the driver: ``total`` grows by theirs
    first_batch_at: float | None = None  # Unix time this coordinator leased its first batch

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed - self.in_flight
