"""Load and check input signals before any engine starts.

A signal is a named series of (timestamp, value) pairs, timestamps as Unix seconds: the
shape sigllm and Orion take. A multichannel signal is Orion's multivariate shape: columns
``timestamp, 0, 1, ..., K-1``, channel 0 the target (``orion.data.load_signal``).
What sigllm accepts, sigray accepts with the same result: unsorted and duplicated
timestamps (sigllm's aggregation sorts them and averages duplicates), dates or
fractional seconds; what is odd is a warning naming the rows.
Refused, with the row and the way forward: what cannot be processed (no rows, values
that are not numbers, NaN), and timestamps that are not seconds (milliseconds...),
which sigllm would turn into hours of imputed points.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sigray.errors import InputError, SigrayWarning

# Numeric timestamps past this (2200-01-01 as Unix seconds) are not seconds.
LATEST_SECONDS = 7_258_118_400
TIMESTAMP_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


@dataclass(frozen=True)
class Signal:
    """One series. Arrays are read-only so the fingerprint stays true.

    ``timestamps`` are Unix seconds: int64 when whole, float64 when fractional; in the
    order given (sigllm sorts them when it aggregates).
    """

    name: str
    timestamps: np.ndarray  # int64 or float64 [points]
    values: np.ndarray  # float64 [points] or, multichannel, [points, channels]; finite

    @property
    def channels(self) -> int:
        """How many channels: 1 for a ``timestamp,value`` signal."""
        return 1 if self.values.ndim == 1 else self.values.shape[1]

    def frame(self) -> pd.DataFrame:
        """The frame sigllm's pipelines take: ``timestamp,value``, or Orion's multivariate
        ``timestamp,0,...,K-1``."""
        return frame_of(self.timestamps, self.values)

    def digest(self) -> str:
        """sha256 over the exact timestamps and values: the signal's identity in a store."""
        h = hashlib.sha256()
        if self.timestamps.dtype.kind == "f":
            h.update(b"float-seconds")  # never equal to a digest of whole seconds
            h.update(self.timestamps.astype("<f8").tobytes())
        else:
            h.update(self.timestamps.astype("<i8").tobytes())
        if self.values.ndim == 2:
            h.update(f"channels={self.values.shape[1]}".encode())  # never equal to a univariate digest
        h.update(np.ascontiguousarray(self.values, dtype="<f8").tobytes())
        return h.hexdigest()


def frame_of(timestamps: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    """``timestamp,value`` for values [points] (or [points, 1]); ``timestamp,0,...,K-1``
    (Orion's multivariate columns) for values [points, K>1]."""
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim == 1:
        return pd.DataFrame({"timestamp": timestamps, "value": values})
    return pd.DataFrame({"timestamp": timestamps, **{str(k): column for k, column in enumerate(values.T)}})


def signal_from_store(name: str, timestamps: np.ndarray, values: np.ndarray) -> Signal:
    """A signal from a store's copy of its data (``RunStore.read_signal``), what its windows were
    asked of, quietly: what is odd in it was said when its file was read, by the file's line
    numbers (the store's rows count from 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SigrayWarning)
        return signal_from_frame(name, frame_of(timestamps, values))


def _timestamps_as_seconds(column: pd.Series, where: str, unit: str | None) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(column):  # a DataFrame's dates (a CSV's are text)
        if column.isna().any():
            raise InputError(f"{where}: 'timestamp' has empty cells ({_bad_rows(column, column.isna())}).")
        return _seconds_of(column.dt.tz_localize("UTC") if column.dt.tz is None else column.dt.tz_convert("UTC"))
    if pd.api.types.is_numeric_dtype(column):
        if column.isna().any():
            raise InputError(f"{where}: 'timestamp' has empty cells ({_bad_rows(column, column.isna())}).")
        seconds = column.to_numpy(dtype="float64")
        if not np.all(np.isfinite(seconds)):
            raise InputError(f"{where}: 'timestamp' {_bad_rows(column, ~np.isfinite(seconds))}: not finite.")
        if unit is not None:
            seconds = seconds / TIMESTAMP_UNITS[unit]
        elif np.abs(seconds).max() > LATEST_SECONDS:
            raise InputError(_not_seconds(where, seconds))
        return _whole_if_possible(seconds)
    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.notna().sum() > len(column) / 2:  # mostly Unix seconds: name the cells that are not
        raise InputError(
            f"{where}: 'timestamp' {_bad_rows(column, numbers.isna(), shown=True)}: not a number, as the other "
            "timestamps are."
        )
    parsed = pd.to_datetime(column, errors="coerce", utc=True, format="mixed")
    if parsed.isna().any():
        raise InputError(
            f"{where}: 'timestamp' {_bad_rows(column, parsed.isna(), shown=True)}: neither Unix seconds nor a date."
        )
    return _seconds_of(parsed)


def _seconds_of(dates: pd.Series) -> np.ndarray:
    """Unix seconds of UTC dates, whole when they all are."""
    nanoseconds = (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy() * 1e9
    return _whole_if_possible(np.round(nanoseconds) / 1e9)


def _whole_if_possible(seconds: np.ndarray) -> np.ndarray:
    """int64 when every timestamp is a whole second (the form stores of earlier sigrays hashed)."""
    return seconds.astype("int64") if np.all(seconds == np.round(seconds)) else seconds


def _not_seconds(where: str, seconds: np.ndarray) -> str:
    biggest = np.abs(seconds).max()
    likely = next((unit for unit, size in (("ns", 1e18), ("us", 1e15), ("ms", 1e12)) if biggest >= size / 10), None)
    guess = {"ns": "nanoseconds", "us": "microseconds", "ms": "milliseconds"}.get(likely)
    hint = (
        f"they look like {guess}: pass --timestamp-unit {likely} (timestamp_unit='{likely}' in Python)"
        if guess
        else "pass --timestamp-unit if they are not seconds"
    )
    return f"{where}: timestamps up to {biggest:.0f} are after the year 2200 as Unix seconds; {hint}."


def _rows(mask, labels: pd.Index, cells: pd.Series | None = None, most: int = 5) -> str:
    """The labels where ``mask`` is True (a CSV's line numbers, a DataFrame's index), the first
    ``most`` named: ``7, 102 and 3 more``; with ``cells``, each cell's text beside its label."""
    positions = np.flatnonzero(np.asarray(mask))
    named = [str(labels[p]) if cells is None else f"{labels[p]} ({cells.iloc[p]!r})" for p in positions[:most]]
    more = f" and {len(positions) - most} more" if len(positions) > most else ""
    return ", ".join(named) + more


def _bad_rows(column: pd.Series, mask, shown: bool = False) -> str:
    """``row 7`` or ``rows 7, 102 and 3 more`` of ``column``; ``shown`` adds each cell's text."""
    word = "rows " if np.count_nonzero(np.asarray(mask)) > 1 else "row "
    return word + _rows(mask, column.index, column if shown else None)


def _warn_if_odd(where: str, timestamps: np.ndarray, labels: pd.Index) -> None:
    steps = np.diff(timestamps)
    back = np.concatenate([[False], steps < 0])
    same = pd.Series(timestamps).duplicated().to_numpy()  # repeated anywhere, sorted or not
    if back.any():
        warnings.warn(
            f"{where}: timestamps go back in time at row(s) {_rows(back, labels)}; sigllm's aggregation sorts them.",
            SigrayWarning,
            stacklevel=3,
        )
    if same.any():
        warnings.warn(
            f"{where}: timestamps repeat at row(s) {_rows(same, labels)}; sigllm's aggregation averages their values.",
            SigrayWarning,
            stacklevel=3,
        )


def signal_from_frame(name: str, frame: pd.DataFrame, where: str | None = None, unit: str | None = None) -> Signal:
    """Check a ``timestamp,value`` frame (or Orion's multivariate ``timestamp,0,...,K-1``)
    and turn it into a Signal.

    ``unit``: what numeric timestamps count (``s``, ``ms``, ``us``, ``ns``); by default
    seconds, and numbers too large for seconds are refused naming the likely unit.
    Raises InputError naming the signal, the column and the bad rows, by the frame's index
    labels (``load_signal`` labels a CSV's rows with their line numbers).
    """
    where = where or f"signal {name!r}"
    frame = frame.rename(columns=lambda c: str(c).strip())
    channels = _value_columns(frame, where)
    if len(frame) == 0:
        raise InputError(f"{where}: has no rows.")
    if unit is not None and unit not in TIMESTAMP_UNITS:
        raise InputError(f"timestamp unit {unit!r} is not one of {', '.join(TIMESTAMP_UNITS)}.")
    values = np.column_stack([_numbers(frame[column], where, column) for column in channels])
    values = values[:, 0] if len(channels) == 1 else values
    timestamps = np.asarray(_timestamps_as_seconds(frame["timestamp"], where, unit))
    _warn_if_odd(where, timestamps, frame.index)
    timestamps.setflags(write=False)
    values.setflags(write=False)
    return Signal(name=name, timestamps=timestamps, values=values)


def _value_columns(frame: pd.DataFrame, where: str) -> list[str]:
    """``["value"]``, or Orion's multivariate channel columns ``["0", ..., "K-1"]`` in order."""
    columns = list(frame.columns)
    numbered = sorted((c for c in columns if c.isdigit()), key=int)
    if "timestamp" in columns and "value" in columns:
        if numbered:
            raise InputError(
                f"{where}: has a 'value' column and channel columns {numbered[:5]}: name the target channel '0' "
                "for a multichannel signal (Orion's timestamp,0,1,...), or drop the numbered columns."
            )
        return ["value"]
    if "timestamp" in columns and numbered:
        expected = [str(k) for k in range(int(numbered[-1]) + 1)]
        gaps = [c for c in expected if c not in columns]
        others = [c for c in columns if c != "timestamp" and c not in numbered]
        if gaps or others:
            problem = f"missing channel(s) {gaps}" if gaps else f"columns {others} are not channels"
            raise InputError(
                f"{where}: a multichannel signal has Orion's columns 'timestamp', '0' (the target), '1', ...; "
                f"{problem}. Name its channels 0..K-1 with no gaps, channel 0 the one to forecast."
            )
        return expected
    missing = sorted({"timestamp", "value"} - set(columns))
    raise InputError(
        f"{where}: needs columns 'timestamp' and 'value' (or, multichannel, 'timestamp', '0', '1', ...); "
        f"missing {missing}, found {columns}."
    )


def _numbers(column: pd.Series, where: str, name: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() & column.notna()
    if bad.any():
        raise InputError(f"{where}: {name!r} {_bad_rows(column, bad, shown=True)}: not a number.")
    values = values.to_numpy(dtype="float64")
    if not np.all(np.isfinite(values)):
        rows = _bad_rows(column, ~np.isfinite(values))
        raise InputError(f"{where}: {name!r} {rows}: NaN, empty or infinite; fill or drop them first.")
    return values


def load_signal(path: str, name: str | None = None, unit: str | None = None) -> Signal:
    """Read a CSV file with ``timestamp,value`` columns; named after the file unless ``name``."""
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a CSV file.")
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file.")
    try:
        with warnings.catch_warnings():
            # index_col=False: rows with more fields than the header are an error, not an index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, skipinitialspace=True, index_col=False)
    except pd.errors.ParserWarning:
        raise InputError(
            f"{path}: rows have more fields than the header names columns; fix the header or the rows."
        ) from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV file ({exc}).") from None
    frame.index = pd.RangeIndex(2, len(frame) + 2)  # rows named by their line in the file (the header is line 1)
    return signal_from_frame(name or name_of(path), frame, where=path, unit=unit)


def name_of(path: str) -> str:
    """A signal's name from its file: the file name without its extension."""
    return os.path.splitext(os.path.basename(path))[0]


def load_signals(sources: list, unit: str | None = None) -> list[Signal]:
    """Signals from CSV paths, ``(name, path)`` or ``(name, DataFrame)`` pairs, or Signals;
    names must be unique. ``unit``: see ``signal_from_frame``."""
    signals = []
    for source in sources:
        if isinstance(source, Signal):
            signals.append(source)
        elif isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], pd.DataFrame):
            signals.append(signal_from_frame(str(source[0]), source[1], unit=unit))
        elif isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], (str, os.PathLike)):
            signals.append(load_signal(os.fspath(source[1]), name=str(source[0]), unit=unit))
        elif isinstance(source, (str, os.PathLike)):
            signals.append(load_signal(os.fspath(source), unit=unit))
        else:
            raise InputError(
                f"cannot read a signal from {type(source).__name__}; give a CSV path, (name, path) or (name, frame)."
            )
    if not signals:
        raise InputError("no signals given.")
    check_unique_names([s.name for s in signals])
    return signals


def check_unique_names(names: list[str]) -> None:
    """InputError naming the signal names given more than once (a store keys signals by name)."""
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputError(
            f"two signals share the name(s) {duplicated}; name them apart: NAME=PATH on the command line "
            "(e.g. smap_pump=smap/pump.csv), (name, path) pairs in Python."
        )
