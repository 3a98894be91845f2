"""Rate limits an engine's provider sets (requests per second, tokens per minute), held for
the whole run: one schedule shared by every worker, not one per worker.

A ``Schedule`` reserves a send time for each request (the generic cell rate algorithm, as in
ATM networks and most API gateways: a theoretical arrival time per limit, a burst of one
second's allowance), asked once per request, just before it is sent. In a run the schedule
lives in a Ray actor (``ray.remote(Schedule)``) that every worker's engine asks; outside Ray an
engine keeps its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sigray.errors import ConfigError

BURST_S = 1.0
"""How far ahead of its limit a caller may go after an idle period: one second's allowance."""


@dataclass(frozen=True)
class RateLimits:
    """Limits in the provider's units; None means no limit of that kind.

    Attributes:
        requests_per_s: requests sent per second, over every worker of the run.
        tokens_per_min: tokens per minute, counted as providers count them before a
            request runs: its prompt's length plus ``max_tokens`` for each of its ``n``
            answers. sigray counts a prompt's UTF-8 bytes, an upper bound on its tokens
            for the byte-level tokenizers LLMs use, so the limit is never exceeded.
    """

    requests_per_s: float | None = None
    tokens_per_min: float | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_s", "tokens_per_min"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not (number and value > 0):
                raise ConfigError(f"{name} must be a positive number, not {value!r}.")

    def __bool__(self) -> bool:
        return self.requests_per_s is not None or self.tokens_per_min is not None


def request_tokens(prompt: str, max_tokens: int, n: int) -> int:
    """A request's cost against a tokens-per-minute limit (see ``RateLimits``)."""
    return len(prompt.encode()) + max_tokens * n


class Schedule:
    """Send times for requests under ``limits``, in the order they are reserved."""

    def __init__(self, limits: RateLimits, clock=time.monotonic):
        self.clock = clock
        # (seconds per unit, the limit's theoretical arrival time) for each limit set
        self.limits: list[list[float]] = []
        if limits.requests_per_s is not None:
            self.limits.append([1.0 / limits.requests_per_s, 0.0])
        self.tokens = None
        if limits.tokens_per_min is not None:
            self.tokens = [60.0 / limits.tokens_per_min, 0.0]

    def reserve(self, tokens: int) -> float:
        """Seconds from now a request costing ``tokens`` must wait before it is sent."""
        now = self.clock()
        per_limit = [(limit, 1.0) for limit in self.limits]
        if self.tokens is not None:
            per_limit.append((self.tokens, float(tokens)))
        # The earliest time every limit allows: when this request's allowance would be spent,
        # less the burst (GCRA's conformance test), and never before now.
        send = max([now] + [tat + spacing * units - BURST_S for (spacing, tat), units in per_limit])
        for limit, units in per_limit:
            limit[1] = max(limit[1], send) + limit[0] * units
        return send - now
