"""Read a store from Python or the command line: one reader behind ``sigray.open``,
``sigray status``, ``results``, ``evaluate`` and ``plot``, for every store format.

Read-only and safe while a run is live: every object on disk is whole (the storage
contract), so a read is a consistent snapshot of what was flushed. Results never look
complete when they are not: ``Results.complete`` is false while any signal lacks a saved
result, ``missing`` names those signals, and ``failed_windows`` says per signal how many
windows were left out of a finished one.
"""

from __future__ import annotations

import collections
import re
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sigray import lease as store_lease
from sigray.errors import InputError, ResultsUnavailableError, StoreError
from sigray.messages import REFUSED
from sigray.signals import frame_of
from sigray.storage import open_storage
from sigray.store import DONE, FAILED, PENDING, RunStore, read_pointer
from sigray.store import result_sets as sets
from sigray.store.format1 import Format1Store
from sigray.store.result_sets import ResultSetInfo

FORMAT1_SET = ResultSetInfo("format1", "as saved by format 1", "", {}, 0.0, 0.0)


@dataclass
class SignalState:
    """One signal's windows by state, whether the result set has its result, and why windows failed."""

    name: str
    windows: int
    done: int
    failed: int
    pending: int
    has_result: bool
    failure_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.pending == 0


@dataclass
class Results:
    """A result set's anomalies (sigllm's ``start, end, severity`` per signal) and what it lacks."""

    store: str
    result_set: ResultSetInfo | None
    anomalies: dict[str, pd.DataFrame]  # signals with a saved result
    missing: list[str]  # signals without one yet: the run has not finished them
    failed_windows: dict[str, int]  # per signal with a result: windows left out of it
    answered: list[str] = field(default_factory=list)  # of ``missing``, those whose windows are all settled
    running: str | None = None  # who holds the store's lease now ("pid P on HOST"): a live run finishing them
    unanswered: list[str] = field(default_factory=list)  # with a result, but no window answered validly

    @property
    def complete(self) -> bool:
        return not self.missing

    def table(self) -> pd.DataFrame:
        """All anomalies in one long table: signal, start, end, severity."""
        frames = [f.assign(signal=name)[["signal", "start", "end", "severity"]] for name, f in self.anomalies.items()]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame({"signal": [], "start": [], "end": [], "severity": []}).astype(
                {"signal": object, "start": "int64", "end": "int64", "severity": "float64"}
            )
        return pd.concat(frames, ignore_index=True)

    def warnings(self) -> list[str]:
        """What a reader of the table must be told: unfinished signals, windows left out."""
        lines = []
        if self.missing:
            total = len(self.missing) + len(self.anomalies)
            pending = [name for name in self.missing if name not in self.answered]
            advice = []
            if self.running:
                advice.append(
                    f"a run is live on this store ({self.running}) and finishes them; `sigray status` shows how far"
                )
            elif pending:
                advice.append(f"windows still pending ({_listed(pending)}): run the command that made them again")
            if self.answered and not self.running:
                advice.append(
                    f"windows all answered ({_listed(self.answered)}): `sigray detect {self.store}` with this set's "
                    "--param post-processes them"
                )
            lines.append(
                f"incomplete: {len(self.missing)} of {total} signal(s) have no results yet in this result set: "
                f"{_listed(self.missing)}. To finish them: {'; '.join(advice)}."
            )
        for name, count in self.failed_windows.items():
            if name in self.unanswered:
                lines.append(
                    f"{name}: none of its {count} window(s) got a valid answer, so its result (nothing found) "
                    "means nothing; `sigray status` says why they failed."
                )
            elif count:
                lines.append(f"{name}: {count} window(s) failed and were left out of its results.")
        return lines

    def to_json(self) -> dict:
        return {
            "complete": self.complete,
            "missing_signals": self.missing,
            "failed_windows": self.failed_windows,
            "result_set": None if self.result_set is None else {"id": self.result_set.id, "name": self.result_set.name},
            "anomalies": self.table().to_dict(orient="records"),
        }


@dataclass
class SavedSignal:
    """One signal as its store holds it, with a result set's detections: enough to draw it."""

    name: str
    signal: pd.DataFrame  # timestamp, value
    anomalies: pd.DataFrame | None  # start, end, severity; None when not finished
    forecast: np.ndarray | None
    forecast_index: np.ndarray | None
    title: str


class StoreReader:
    """A store opened read-only: settings, per-signal state, result sets, anomalies, signals."""

    def __init__(self, path: str):
        storage = open_storage(path)
        pointer = read_pointer(storage)
        if pointer is None:
            raise StoreError(f"no sigray store at {storage.url}.")
        self.path = storage.url
        self.format_version = int(pointer["format_version"])
        self._source = _Format1(storage) if self.format_version == 1 else _Format2(storage)

    # -- settings -----------------------------------------------------------

    @property
    def identity(self) -> dict:
        return self._source.identity

    @property
    def fingerprint(self) -> str:
        return self._source.fingerprint

    @property
    def pipeline(self) -> str | None:
        return self.identity.get("pipeline")

    @property
    def model(self) -> str | None:
        return self.identity.get("model") or self.identity.get("engine")

    @property
    def signal_names(self) -> list[str]:
        return self._source.names()

    @property
    def settings(self) -> dict:
        """The run's settings as the store recorded them (``RunConfig`` fields); a format-1
        store, which kept none apart, gives its identity."""
        return dict(getattr(self._source.store, "config", None) or self.identity)

    def result_sets(self) -> list[ResultSetInfo]:
        """The store's result sets, the most recently used last."""
        return self._source.result_sets()

    def result_set(self, wanted: str | None = None) -> ResultSetInfo | None:
        """The set ``wanted`` names (id, id prefix or name), else the most recently used."""
        return self._source.find_set(wanted)

    # -- state --------------------------------------------------------------

    def signal_states(self, wanted_set: str | None = None, status: np.ndarray | None = None) -> list[SignalState]:
        """Each signal's windows by state, and whether the result set (default: the last used) has its result."""
        chosen = self.result_set(wanted_set)
        status = self._source.read_state()[0] if status is None else status
        reasons = None
        states = []
        for name in self.signal_names:
            rows = self._source.rows(name)
            part = status[rows]
            failed = rows[part == FAILED]
            counts: dict[str, int] = {}
            if failed.size:
                reasons = self._source.read_reasons() if reasons is None else reasons
                counts = dict(collections.Counter(_short_reason(reasons[r]) for r in failed.tolist()))
            states.append(
                SignalState(
                    name=name,
                    windows=len(rows),
                    done=int(np.count_nonzero(part == DONE)),
                    failed=int(failed.size),
                    pending=int(np.count_nonzero(part == PENDING)),
                    has_result=chosen is not None and self._source.has_result(chosen.id, name),
                    failure_reasons=counts,
                )
            )
        return states

    def status(self, wanted_set: str | None = None) -> dict:
        """Counts overall and per signal, failure reasons, the attempts histogram, who holds
        the write lease, the last flush, the recent rate with an ETA, and the prompt tokens
        per window asked (the served model's count, in the last session that recorded one)."""
        status, attempts = self._source.read_state()
        states = self.signal_states(wanted_set, status)
        rows = self._source.all_rows()
        held = store_lease.read_lease(self.path)
        now = time.time()
        samples = self._source.progress()
        times = [samples[-1]["time"]] if samples else []
        if held is not None:
            times.append(held.renewed_at)
        last_update = max(times, default=None)
        rate = recent_rate(samples)
        pending = int(np.count_nonzero(status[rows] == PENDING))
        reasons: collections.Counter = collections.Counter()
        for state in states:
            reasons.update(state.failure_reasons)
        chosen = self.result_set(wanted_set)
        return {
            "store": self.path,
            "format_version": self.format_version,
            "fingerprint": self.fingerprint,
            "pipeline": self.pipeline,
            "model": self.model,
            "windows": int(len(rows)),
            "done": int(np.count_nonzero(status[rows] == DONE)),
            "failed": int(np.count_nonzero(status[rows] == FAILED)),
            "pending": pending,
            "failure_reasons": dict(reasons),
            "last_update": last_update,
            "last_update_age_s": None if last_update is None else round(now - last_update, 1),
            "windows_per_s": None if rate is None else round(rate, 3),
            "eta_s": 0.0 if pending == 0 else None if not rate else round(pending / rate, 1),
            "attempts_histogram": {str(k): int(v) for k, v in enumerate(np.bincount(attempts[rows], minlength=1)) if v},
            "prompt_tokens": _prompt_tokens(samples),
            "result_set": None if chosen is None else {"id": chosen.id, "name": chosen.name},
            "result_sets": [{"id": s.id, "name": s.name} for s in self.result_sets()],
            "signals": [vars(s) | {"finished": s.finished} for s in states],
            "running": held is not None and held.alive(now),
            # Signals a live run has not registered yet (sigray.feed), as its coordinator last recorded.
            "signals_to_add": samples[-1].get("signals_to_add", 0) if samples and held and held.alive(now) else 0,
            "lease": None if held is None else {"host": held.host, "pid": held.pid, "expires_at": held.expires_at},
        }

    # -- results ------------------------------------------------------------

    def results(self, wanted_set: str | None = None) -> Results:
        """The anomalies of a result set (the most recently used by default)."""
        chosen = self.result_set(wanted_set)
        anomalies, missing, failed, answered, unanswered = {}, [], {}, [], []
        status = None
        for name in self.signal_names:
            saved = None if chosen is None else self._source.read_result(chosen.id, name)
            if saved is None:
                missing.append(name)
                status = self._source.read_state()[0] if status is None else status
                if not (status[self._source.rows(name)] == PENDING).any():
                    answered.append(name)
                continue
            anomalies[name] = _events(saved)
            failed[name] = int(len(saved.get("failed_windows", [])))
            if failed[name] and failed[name] == self._source.n_windows(name):
                unanswered.append(name)
        held = store_lease.read_lease(self.path) if missing else None
        running = f"pid {held.pid} on {held.host}" if held is not None and held.alive(time.time()) else None
        return Results(self.path, chosen, anomalies, missing, failed, answered, running, unanswered)

    def signal(self, name: str) -> pd.DataFrame:
        """The signal as it was given: ``timestamp`` and ``value`` (multichannel: Orion's ``0``, ..., ``K-1``)."""
        self._check_name(name)
        data = self._source.read_signal(name)
        if data is None:
            raise ResultsUnavailableError(
                f"store {self.path} was written by an older sigray that did not save the signal itself; run the "
                "same command again with this sigray to save it (nothing is recomputed)."
            )
        return frame_of(*data)

    def saved_signal(self, name: str | None = None, wanted_set: str | None = None) -> SavedSignal:
        """A signal with a result set's detections and forecast, for a picture.

        ``name`` may be left out when the store holds one signal. Raises InputError for a
        name the store does not hold (listing those it does).
        """
        names = self.signal_names
        if name is None:
            if len(names) != 1:
                raise InputError(
                    f"store {self.path} holds {len(names)} signals; name one with --signal: {_listed(names)}."
                )
            name = names[0]
        signal = self.signal(name)
        chosen = self.result_set(wanted_set)
        saved = None if chosen is None else self._source.read_result(chosen.id, name)
        setting = "" if chosen is None or chosen.name == FORMAT1_SET.name else f" [{chosen.name}]"
        title = f"{name}: {self.pipeline} on {self.model}{setting}"
        if saved is None:
            title += " (unfinished: no results yet)"
        return SavedSignal(
            name=name,
            signal=signal,
            anomalies=None if saved is None else _events(saved),
            forecast=None if saved is None else saved.get("forecast"),
            forecast_index=None if saved is None else saved.get("forecast_index"),
            title=title,
        )

    def failures(self) -> pd.DataFrame:
        """Every failed window: signal, window (its position in the signal), reason."""
        status, _ = self._source.read_state()
        reasons = self._source.read_reasons()
        rows = []
        for name in self.signal_names:
            signal_rows = self._source.rows(name)
            for position in np.flatnonzero(status[signal_rows] == FAILED).tolist():
                rows.append({"signal": name, "window": position, "reason": str(reasons[signal_rows[position]])})
        return pd.DataFrame(rows, columns=["signal", "window", "reason"])

    def forecast(self, name: str, wanted_set: str | None = None) -> pd.DataFrame | None:
        """The detector's forecast in a result set: ``timestamp, forecast`` (original units);
        None when the set has no result for the signal or the pipeline forecasts nothing."""
        self._check_name(name)
        chosen = self.result_set(wanted_set)
        saved = None if chosen is None else self._source.read_result(chosen.id, name)
        if saved is None or saved.get("forecast") is None or saved.get("forecast_index") is None:
            return None
        return pd.DataFrame({"timestamp": saved["forecast_index"], "forecast": saved["forecast"]})

    def to_pandas(self) -> pd.DataFrame:
        """Every window of every signal, one row each: ``signal, window`` (its position in the
        signal), ``status`` (pending, done, failed), ``attempts``, ``reason`` (why it failed)."""
        status, attempts = self._source.read_state()
        names = {PENDING: "pending", DONE: "done", FAILED: "failed"}
        reasons = self._source.read_reasons() if (status == FAILED).any() else None
        frames = []
        for name in self.signal_names:
            rows = self._source.rows(name)
            frames.append(
                pd.DataFrame(
                    {
                        "signal": name,
                        "window": np.arange(len(rows)),
                        "status": [names.get(int(v), str(v)) for v in status[rows]],
                        "attempts": attempts[rows].astype("int64"),
                        "reason": ["" if reasons is None or status[r] != FAILED else str(reasons[r]) for r in rows],
                    }
                )
            )
        columns = ["signal", "window", "status", "attempts", "reason"]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    def to_xarray(self):
        """The window table (status, attempts, reasons, answers, parsed values; dimensions
        ``window, sample, step``) as a lazily read ``xarray.Dataset``. Needs the ``export``
        extra (xarray); format 2 stores only."""
        try:
            import xarray as xr
        except ImportError:
            raise ResultsUnavailableError("to_xarray needs xarray: install sigray's export extra.") from None
        if self.format_version == 1:
            raise ResultsUnavailableError(
                f"store {self.path} has format 1; run its command once to migrate it, then it opens with xarray."
            )
        group = self._source.store.group
        return xr.open_zarr(group.store, group=f"{group.path}/windows", consolidated=False)

    def _check_name(self, name: str) -> None:
        if name not in self.signal_names:
            raise InputError(f"store {self.path} holds no signal {name!r}; it holds: {_listed(self.signal_names)}.")


def open_store(path: str) -> StoreReader:
    """Open a store to read (any format; a newer one is refused with a message)."""
    return StoreReader(path)


def _prompt_tokens(samples: list[dict]) -> dict | None:
    """``{"mean", "max", "windows"}`` from the newest progress sample that counted prompt tokens."""
    counted = [s["prompt_tokens"] for s in samples if "prompt_tokens" in s]
    if not counted:
        return None
    last = counted[-1]
    return {"mean": round(last["total"] / last["windows"], 1), "max": last["max"], "windows": last["windows"]}


def recent_rate(samples: list[dict]) -> float | None:
    """Windows settled per second over the latest samples of one writer (``progress.json``);
    None with fewer than two such samples."""
    if not samples:
        return None
    session = [s for s in samples if s["session"] == samples[-1]["session"]]
    first, last = session[0], session[-1]
    elapsed = last["time"] - first["time"]
    if len(session) < 2 or elapsed <= 0:
        return None
    return (last["done"] + last["failed"] - first["done"] - first["failed"]) / elapsed


def _events(saved: dict) -> pd.DataFrame:
    return pd.DataFrame({"start": saved["start"], "end": saved["end"], "severity": saved["severity"]})


def _short_reason(reason) -> str:
    """A failure reason without the specifics of one window (its sample, its values)."""
    text = str(reason) or "unknown (not recorded)"
    text = text.split("; last: ", 1)[-1]
    if text.startswith(REFUSED):  # one count per kind of refusal, whatever the prompt's length
        return re.sub(r"\d+", "N", text)
    return text.split(": ", 1)[-1] if text.startswith("sample ") else text


def _listed(names: list[str], most: int = 20) -> str:
    more = f", ... ({len(names) - most} more)" if len(names) > most else ""
    return ", ".join(names[:most]) + more


# -- the formats ---------------------------------------------------------------


class _Format2:
    def __init__(self, storage):
        self.store = RunStore.open(storage, read_only=True)
        self.identity = self.store.identity
        self.fingerprint = self.store.fingerprint
        self._entries = {e.name: e for e in self.store.signals}

    def names(self) -> list[str]:
        return list(self._entries)

    def rows(self, name: str) -> np.ndarray:
        return self.store.signal_rows(self._entries[name])

    def n_windows(self, name: str) -> int:
        return self._entries[name].n_windows

    def all_rows(self) -> np.ndarray:
        if not self._entries:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([self.rows(name) for name in self._entries]))

    def read_state(self):
        return self.store.read_state()

    def read_reasons(self):
        return self.store.read_reasons()

    def progress(self) -> list[dict]:
        return self.store.read_progress()

    def result_sets(self) -> list[ResultSetInfo]:
        return sets.list_sets(self.store.group)

    def find_set(self, wanted):
        return sets.find_set(self.store.group, wanted)

    def has_result(self, sid: str, name: str) -> bool:
        return sets.has_result(self.store.group, sid, self._entries[name])

    def read_result(self, sid: str, name: str):
        return sets.read_result(self.store.group, sid, self._entries[name])

    def read_signal(self, name: str):
        return self.store.read_signal(self._entries[name])


class _Format1:
    """Format 1 seen as format 2: one window axis, one result set (``format1``)."""

    def __init__(self, storage):
        self.store = Format1Store.open(storage)
        self.identity = self.store.identity
        self.fingerprint = self.store.fingerprint
        self._ranges = {name: (offset, n) for name, offset, n in self.store.ranges}

    def names(self) -> list[str]:
        return list(self._ranges)

    def rows(self, name: str) -> np.ndarray:
        offset, n = self._ranges[name]
        return np.arange(offset, offset + n, dtype=np.int64)

    def n_windows(self, name: str) -> int:
        return self._ranges[name][1]

    def all_rows(self) -> np.ndarray:
        return np.arange(sum(n for _, n in self._ranges.values()), dtype=np.int64)

    def read_state(self):
        return self.store.read("status"), self.store.read("attempts")

    def read_reasons(self):
        return np.full(len(self.all_rows()), "", dtype=object)

    def progress(self) -> list[dict]:
        return self.store.read_progress()

    def result_sets(self) -> list[ResultSetInfo]:
        return [FORMAT1_SET] if any(self.store.read_result(i) is not None for i in range(len(self._ranges))) else []

    def find_set(self, wanted):
        found = self.result_sets()
        if wanted not in (None, FORMAT1_SET.id):
            raise StoreError(
                f"--set {wanted!r}: store {self.store.path} has format 1, whose one result set is 'format1'."
            )
        return found[0] if found else None

    def _index(self, name: str) -> int:
        return list(self._ranges).index(name)

    def has_result(self, sid: str, name: str) -> bool:
        return self.store.read_result(self._index(name)) is not None

    def read_result(self, sid: str, name: str):
        return self.store.read_result(self._index(name))

    def read_signal(self, name: str):
        saved = self.store.read_result(self._index(name)) or {}
        if "signal_timestamps" not in saved:
            return None
        return saved["signal_timestamps"], saved["signal_values"]
