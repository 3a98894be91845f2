"""Read a run's state and results from its store alone (no Ray, no sigllm needed).

Works while the run is live and from any machine that sees the store: every chunk on
disk is whole (atomic writes), so a read is a consistent-enough snapshot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sigray import lease as store_lease
from sigray.errors import InputError, ResultsUnavailableError
from sigray.store import DONE, FAILED, PENDING, RunStore, read_progress


def store_status(path: str) -> dict:
    """Counts per signal, the attempts histogram, who holds the write lease, when the store was
    last flushed, and the recent rate with an ETA (None when ``progress.json`` cannot tell)."""
    store = RunStore.open(path, read_only=True)
    status, attempts = store.read_state()
    signals = []
    for index, s in enumerate(store.layout.signals):
        part = status[s.offset : s.stop]
        signals.append(
            {
                "name": s.name,
                "windows": s.n_windows,
                "done": int(np.count_nonzero(part == DONE)),
                "failed": int(np.count_nonzero(part == FAILED)),
                "pending": int(np.count_nonzero(part == PENDING)),
                "has_result": store.has_result(index),
            }
        )
    held = store_lease.read_lease(path)
    now = time.time()
    live = held is not None and held.alive(now)
    counts = np.bincount(attempts, minlength=1)
    pending = int(np.count_nonzero(status == PENDING))
    samples = read_progress(path)
    # The coordinator's last flush: its progress sample, or its lease renewal (a live lease).
    times = [samples[-1]["time"]] if samples else []
    if held is not None:
        times.append(held.renewed_at)
    last_update = max(times, default=None)
    rate = recent_rate(samples)
    return {
        "store": path,
        "fingerprint": store.fingerprint,
        "pipeline": store.meta["identity"].get("pipeline"),
        "model": store.meta["identity"].get("model"),
        "windows": int(len(status)),
        "done": int(np.count_nonzero(status == DONE)),
        "failed": int(np.count_nonzero(status == FAILED)),
        "pending": pending,
        "last_update": last_update,
        "last_update_age_s": None if last_update is None else round(now - last_update, 1),
        "windows_per_s": None if rate is None else round(rate, 3),
        "eta_s": 0.0 if pending == 0 else None if not rate else round(pending / rate, 1),
        "attempts_histogram": {str(k): int(v) for k, v in enumerate(counts) if v},
        "signals": signals,
        "running": live,
        "lease": None if held is None else {"host": held.host, "pid": held.pid, "expires_at": held.expires_at},
    }


def recent_rate(samples: list[dict]) -> float | None:
    """Windows settled per second over the latest samples of one writer (see ``progress.json``);
    None with fewer than two such samples."""
    if not samples:
        return None
    session = [s for s in samples if s["session"] == samples[-1]["session"]]
    first, last = session[0], session[-1]
    elapsed = last["time"] - first["time"]
    if len(session) < 2 or elapsed <= 0:
        return None
    return (last["done"] + last["failed"] - first["done"] - first["failed"]) / elapsed


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


@dataclass
class SavedSignal:
    """One signal of a finished run, as its store holds it: enough to draw it."""

    name: str
    signal: pd.DataFrame  # timestamp, value
    anomalies: pd.DataFrame  # start, end, severity
    forecast: np.ndarray | None
    forecast_index: np.ndarray | None
    title: str


def saved_signal(path: str, name: str | None = None) -> SavedSignal:
    """The raw signal, anomalies and forecast of signal ``name`` (optional when the store holds one).

    Raises InputError for a name the store does not hold (listing those it does), and
    ResultsUnavailableError when the run has not finished or the store predates saving signals.
    """
    store = RunStore.open(path, read_only=True)
    names = [s.name for s in store.layout.signals]
    if name is None:
        if len(names) != 1:
            raise InputError(f"store {path} holds {len(names)} signals; name one with --signal: {_listed(names)}.")
        name = names[0]
    if name not in names:
        raise InputError(f"store {path} holds no signal {name!r}; it holds: {_listed(names)}.")
    index = names.index(name)
    saved = store.read_result(index)
    if saved is None:
        status, _ = store.read_state()
        settled = int(np.count_nonzero(status != PENDING))
        raise ResultsUnavailableError(
            f"store {path} has no results for {name!r} yet: the run has not finished ({settled} of "
            f"{len(status)} windows settled). Run the same command again to finish it."
        )
    if "signal_timestamps" not in saved:
        raise ResultsUnavailableError(
            f"store {path} was written by an older sigray that did not save the signal itself; run the "
            "same command again with this sigray to save it (nothing is recomputed)."
        )
    identity = store.meta["identity"]
    return SavedSignal(
        name=name,
        signal=pd.DataFrame({"timestamp": saved["signal_timestamps"], "value": saved["signal_values"]}),
        anomalies=pd.DataFrame({"start": saved["start"], "end": saved["end"], "severity": saved["severity"]}),
        forecast=saved.get("forecast"),
        forecast_index=saved.get("forecast_index"),
        title=f"{name}: {identity.get('pipeline')} on {identity.get('model') or identity.get('engine')}",
    )


def _listed(names: list[str], most: int = 20) -> str:
    more = f", ... ({len(names) - most} more)" if len(names) > most else ""
    return ", ".join(names[:most]) + more
