"""Rate limits shared by a run's workers: the schedule alone (a fake clock), then a run whose
two workers share one limit against the server test double."""

from __future__ import annotations

import numpy as np
import pytest

from sigray.errors import ConfigError
from sigray.rate_limit import BURST_S, RateLimits, Schedule, request_tokens
from tests.openai_stub import OpenAIStubServer, run_through


class FakeClock:
    """A clock the test moves (a test double)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _send_times(schedule: Schedule, clock: FakeClock, costs: list[int]) -> np.ndarray:
    return np.array([clock.now + schedule.reserve(cost) for cost in costs])


def _most_in_any(times: np.ndarray, span_s: float) -> int:
    times = np.sort(times)
    return int(max(np.searchsorted(times, t + span_s, side="left") - i for i, t in enumerate(times)))


def test_requests_per_second_allow_one_seconds_burst_then_keep_the_pace():
    clock = FakeClock()
    times = _send_times(Schedule(RateLimits(requests_per_s=10), clock), clock, [1] * 50)
    assert (np.diff(times) >= 0).all()
    assert np.count_nonzero(times - clock.now < 1e-9) == 10  # the burst: one second's allowance
    assert np.diff(times[10:]) == pytest.approx(0.1)
    assert _most_in_any(times, 1.0) <= 10 * (1 + BURST_S)


def test_tokens_per_minute_pace_by_cost_and_the_stricter_limit_wins():
    clock = FakeClock()
    schedule = Schedule(RateLimits(requests_per_s=1000, tokens_per_min=6000), clock)  # 100 tokens/s
    times = _send_times(schedule, clock, [50] * 40)
    assert np.diff(times[-10:]) == pytest.approx(0.5)  # 50 tokens at 100/s
    spent = np.cumsum([50] * 40)
    elapsed = times - clock.now
    assert (spent <= 100 * (elapsed + BURST_S) + 50).all()


def test_an_idle_schedule_does_not_bank_more_than_its_burst():
    clock = FakeClock()
    schedule = Schedule(RateLimits(requests_per_s=5), clock)
    _send_times(schedule, clock, [1] * 20)
    clock.now += 3600
    times = _send_times(schedule, clock, [1] * 20)
    assert np.count_nonzero(times - clock.now < 1e-9) == 5


def test_limits_must_be_positive():
    with pytest.raises(ConfigError, match="requests_per_s must be a positive number"):
        RateLimits(requests_per_s=0)
    with pytest.raises(ConfigError, match="tokens_per_min"):
        RateLimits(tokens_per_min=-1)
    with pytest.raises(ConfigError, match="requests_per_s must be a positive number, not 'fast'"):
        RateLimits(requests_per_s="fast")


def test_a_requests_cost_is_its_prompt_bytes_plus_every_answers_budget():
    assert request_tokens("12,34", max_tokens=10, n=3) == 5 + 30
    assert request_tokens("é", max_tokens=0, n=1) == 2


def test_two_workers_share_one_limit_on_the_server(ray_session, cpu_signal, tmp_path):
    """Two workers with up to 8 requests in flight each, 8 requests/s for the run: the server never sees
    more than the limit (and its burst) in any two seconds; a limit per worker would let it see twice that."""
    rate = 8.0
    with OpenAIStubServer() as stub:
        options = {"requests_per_s": rate, "max_concurrency": 8}
        settings = {"workers": 2, "batch_size": 8, "flush_interval_s": 0.5}
        result = run_through(stub, cpu_signal, str(tmp_path / "run"), options, **settings)
        arrivals = np.array(stub.arrivals)
    assert result.complete and len(arrivals) == result.total_windows + 1  # and the driver's format check
    assert _most_in_any(arrivals, 2.0) <= rate * (2 + BURST_S) + 2  # +2: two requests' transit jitter
    assert arrivals.max() - arrivals.min() >= (len(arrivals) - rate * BURST_S) / rate * 0.9, "paced by the limit"
