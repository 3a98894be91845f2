"""The shapes a store holds, as plain dataclasses: window states, signal entries, new rows.

Nothing here touches storage; ``run_store`` reads and writes these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

PENDING, DONE, FAILED = 0, 1, 2  # a window's status


@dataclass(frozen=True)
class SignalEntry:
    """One signal of a store, as its registry names it.

    ``group`` is where its arrays live (``signals/<group>``): a signal whose data changed
    gets a new group, so the one a reader holds never changes under it. ``n_windows``
    counts the signal's windows in order (the same row may serve several of them).
    """

    name: str
    group: int
    digest: str
    n_windows: int
    n_points: int
    channels: int = 1

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> SignalEntry:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class WindowRequest:
    """What one window asks the engine, keyed by its content (see ``sigray.plan``)."""

    key: bytes  # 16 bytes: blake2b of (generation fingerprint, prompt, limits)
    prompt: str
    max_digits: int
    max_tokens: int


@dataclass(frozen=True)
class NewSignal:
    """A signal to register: its data and the request of each of its windows, in order."""

    name: str
    digest: str
    timestamps: np.ndarray  # [points], int64 Unix seconds (float64 when fractional)
    values: np.ndarray  # [points, channels] float64
    requests: list[WindowRequest]


@dataclass
class WindowResults:
    """Accepted answers of some rows of the window table, ready to be flushed."""

    windows: np.ndarray  # int64 [k] rows
    answers: list[list[str]]  # k lists of n_samples texts
    values: np.ndarray  # float32 [k, n_samples, horizon]


def keys_to_array(keys: list[bytes]) -> np.ndarray:
    """16-byte keys as the store's ``uint64 [k, 2]``."""
    if not keys:
        return np.zeros((0, 2), dtype="<u8")
    return np.frombuffer(b"".join(keys), dtype="<u8").reshape(-1, 2).copy()


def array_to_keys(array: np.ndarray) -> list[bytes]:
    data = np.ascontiguousarray(array, dtype="<u8").tobytes()
    return [data[i : i + 16] for i in range(0, len(data), 16)]


_KEY = np.dtype([("high", "<u8"), ("low", "<u8")])  # a 16-byte key as one sortable value


class KeyIndex:
    """The row of each key of the window table, as sorted arrays: 24 bytes a window where a dict
    of 16-byte keys costs about 180 (a million windows: 24 MB, not 180), so registering signals in
    a store of millions of windows does not hold a Python object per window (issue 16.2)."""

    def __init__(self, keys: np.ndarray):
        """``keys``: the table's ``uint64 [n, 2]`` keys, row ``i`` at ``keys[i]``."""
        as_values = np.ascontiguousarray(keys, dtype="<u8").view(_KEY).ravel()
        self._order = np.argsort(as_values, kind="stable")
        self._sorted = as_values[self._order]

    def __len__(self) -> int:
        return len(self._sorted)

    def add(self, keys: np.ndarray) -> None:
        """Index ``keys`` (``uint64 [k, 2]``, none indexed yet) as the rows after the last:
        a table that grows keeps its index, without reading every key again."""
        new = np.ascontiguousarray(keys, dtype="<u8").view(_KEY).ravel()
        order = np.argsort(new, kind="stable")
        at = np.searchsorted(self._sorted, new[order])
        self._order = np.insert(self._order, at, len(self._sorted) + order)
        self._sorted = np.insert(self._sorted, at, new[order])

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """The row of each of ``keys`` (``uint64 [k, 2]``), -1 where the table lacks it."""
        wanted = np.ascontiguousarray(keys, dtype="<u8").view(_KEY).ravel()
        if not len(self._sorted):
            return np.full(len(wanted), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, wanted), len(self._sorted) - 1)
        return np.where(self._sorted[at] == wanted, self._order[at], -1).astype(np.int64)
