"""Read a run's state and results from its store alone (no Ray, no sigllm needed).

Works while the run is live and from any machine that sees the store: every chunk on
disk is whole (atomic writes), so a read is a consistent-enough snapshot.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from sigray import lease as store_lease
from sigray.store import DONE, FAILED, PENDING, RunStore


def store_status(path: str) -> dict:
    """Counts per signal, the attempts histogram, and who holds the write lease."""
    store = RunStore.open(path, read_only=True)
    status, attempts = store.read_state()
    signals = []
    for s in store.layout.signals:
        part = status[s.offset : s.stop]
        signals.append(
            {
                "name": s.name,
                "windows": s.n_windows,
                "done": int(np.count_nonzero(part == DONE)),
                "failed": int(np.count_nonzero(part == FAILED)),
                "pending": int(np.count_nonzero(part == PENDING)),
                "has_result": store.read_result(store.layout.signals.index(s)) is not None,
            }
        )
    held = store_lease.read_lease(path)
    live = held is not None and held.alive(time.time())
    counts = np.bincount(attempts, minlength=1)
    return {
        "store": path,
        "fingerprint": store.fingerprint,
        "pipeline": store.meta["identity"].get("pipeline"),
        "model": store.meta["identity"].get("model"),
        "windows": int(len(status)),
        "done": int(np.count_nonzero(status == DONE)),
        "failed": int(np.count_nonzero(status == FAILED)),
        "pending": int(np.count_nonzero(status == PENDING)),
        "attempts_histogram": {str(k): int(v) for k, v in enumerate(counts) if v},
        "signals": signals,
        "running": live,
        "lease": None if held is None else {"host": held.host, "pid": held.pid, "expires_at": held.expires_at},
    }


def store_results(path: str) -> dict[str, pd.DataFrame]:
    """Anomalies per signal (start, end, severity) as saved when the run finished."""
    store = RunStore.open(path, read_only=True)
    results = {}
    for index, s in enumerate(store.layout.signals):
        saved = store.read_result(index)
        if saved is not None:
            results[s.name] = pd.DataFrame(
                {"start": saved["start"], "end": saved["end"], "severity": saved["severity"]}
            )
    return results


def anomalies_frame(results: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All signals' anomalies in one long table: signal, start, end, severity."""
    frames = [frame.assign(signal=name)[["signal", "start", "end", "severity"]] for name, frame in results.items()]
    if not frames:
        return pd.DataFrame(columns=["signal", "start", "end", "severity"])
    return pd.concat(frames, ignore_index=True)
