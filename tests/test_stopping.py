"""SIGTERM is a graceful stop from the moment a run starts, also across ``ray.init`` (which resets it)."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from sigray.stopping import StopRequested, init_ray_keeping_stop


def _ray_like_init():
    """What ``ray.init`` does to a driver: a SIGTERM handler that exits at once."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))


def test_a_term_after_ray_init_replaced_the_handler_is_still_a_stop_request():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequested() as stop:
        init_ray_keeping_stop(_ray_like_init)
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread before kill returns
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def test_a_term_while_ray_init_runs_is_a_stop_request_not_an_exit():
    def init_interrupted():
        _ray_like_init()
        os.kill(os.getpid(), signal.SIGTERM)

    with StopRequested() as outer, StopRequested() as inner:  # the CLI's and the runner's
        init_ray_keeping_stop(init_interrupted)
        assert outer.requested and inner.requested
    with StopRequested() as fresh:  # a new run in the same process starts unsignalled
        assert not fresh.requested


def test_other_exits_from_ray_init_pass_through():
    def init_exits():
        raise SystemExit(3)

    with StopRequested(), pytest.raises(SystemExit):
        init_ray_keeping_stop(init_exits)


def test_a_deadline_is_a_stop_request():
    with StopRequested(deadline_s=0) as stop:
        assert stop.requested
