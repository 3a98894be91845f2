"""Synthetic stores shaped like a ``mistral_detector`` run, for the store and coordinator benchmarks.

Prompts of ~140 integers, 10 samples of 5 steps per window: the sizes sigllm's detector
produces on NAB signals, without computing a plan for a million windows.
"""

from __future__ import annotations

import os

import numpy as np

from sigray.keys import window_key
from sigray.store import DONE, NewSignal, RunStore, WindowRequest, WindowResults

N_SAMPLES, HORIZON, WINDOW_VALUES = 10, 5, 140


def synthetic_prompts(n: int, seed: int = 0) -> list[str]:
    values = np.random.default_rng(seed).integers(10, 9999, (n, WINDOW_VALUES))
    return [",".join(map(str, row)) for row in values.tolist()]


def canned_answers(values: np.ndarray) -> list[list[str]]:
    """The texts a detector would have answered for ``values`` [k, samples, horizon]."""
    return [[",".join(str(int(v)) for v in sample) for sample in row] for row in values]


def build_store(
    path: str, n: int, chunk_windows: int = 4096, done_every: int | None = None
) -> dict[int, WindowRequest]:
    """A store of one signal of ``n`` distinct windows (kept if ``path`` exists); every
    ``done_every``-th window done with answers, the rest pending. Returns the plan's
    requests by row (what ``RunStore.repair`` checks against)."""
    generation = f"synthetic-{n}"
    requests = [WindowRequest(window_key(generation, p, 5, 32), p, 5, 32) for p in synthetic_prompts(n)]
    if os.path.isdir(path):
        return dict(enumerate(requests))
    store = RunStore.create(path, {"benchmark": n}, generation, {}, N_SAMPLES, HORIZON, chunk_windows)
    points = np.arange(n, dtype=np.int64)
    store.add_signals([NewSignal("synthetic", generation, points, points.reshape(-1, 1) * 1.0, requests)])
    rng = np.random.default_rng(1)
    for chunk in range(-(-n // chunk_windows) if done_every else 0):
        where = slice(chunk * chunk_windows, min((chunk + 1) * chunk_windows, n))
        windows = np.arange(where.start, where.stop, done_every, dtype=np.int64)
        values = rng.integers(0, 1000, (len(windows), N_SAMPLES, HORIZON)).astype(np.float32)
        status = np.zeros(where.stop - where.start, dtype=np.uint8)
        status[::done_every] = DONE
        attempts = (status == DONE).astype(np.uint8)
        store.flush(WindowResults(windows, canned_answers(values), values), {chunk: status}, {chunk: attempts})
    return dict(enumerate(requests))
