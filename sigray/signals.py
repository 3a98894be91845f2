"""Load and check input signals before any engine starts.

A signal is a named, strictly increasing series of (timestamp, value) pairs, with
timestamps as integer Unix seconds, the shape sigllm and Orion take.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sigray.errors import InputError


@dataclass(frozen=True)
class Signal:
    """One univariate series. Arrays are read-only so the fingerprint stays true."""

    name: str
    timestamps: np.ndarray  # int64 seconds, strictly increasing
    values: np.ndarray  # float64, finite

    def frame(self) -> pd.DataFrame:
        """The signal as the ``timestamp,value`` frame sigllm's pipelines take."""
        return pd.DataFrame({"timestamp": self.timestamps, "value": self.values})

    def digest(self) -> str:
        """sha256 over the exact timestamps and values: part of the run fingerprint."""
        h = hashlib.sha256()
        h.update(self.timestamps.astype("<i8").tobytes())
        h.update(self.values.astype("<f8").tobytes())
        return h.hexdigest()


# sigllm's Float2Scalar turns (value - minimum) x 10^decimal into int64 (< 9.2e18); this bound
# keeps that exact for decimal <= 3, with room to spare.
MAX_ABS_VALUE = 1e15


def _timestamps_as_seconds(column: pd.Series, where: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(column):
        if column.isna().any():
            raise InputError(f"{where}: 'timestamp' has empty cells (row {_first_bad_row(column.isna())}).")
        as_float = column.to_numpy(dtype="float64")
        if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
            raise InputError(f"{where}: 'timestamp' must be whole Unix seconds or dates.")
        return as_float.astype("int64")
    parsed = pd.to_datetime(column, errors="coerce", utc=True)
    if parsed.isna().any():
        row = _first_bad_row(parsed.isna())
        raise InputError(
            f"{where}: 'timestamp' row {row} ({column.iloc[row - 2]!r}) is neither Unix seconds nor a date."
        )
    return (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def _first_bad_row(mask: pd.Series | np.ndarray) -> int:
    """The 1-based line number in a CSV with a header, of the first True in mask."""
    return int(np.flatnonzero(np.asarray(mask))[0]) + 2


def signal_from_frame(name: str, frame: pd.DataFrame, where: str | None = None) -> Signal:
    """Check a ``timestamp,value`` frame and turn it into a Signal.

    Raises InputError naming the signal, the column and the first bad row.
    """
    where = where or f"signal {name!r}"
    missing = {"timestamp", "value"} - set(frame.columns)
    if missing:
        raise InputError(
            f"{where}: needs columns 'timestamp' and 'value'; missing {sorted(missing)}, found {list(frame.columns)}."
        )
    if len(frame) == 0:
        raise InputError(f"{where}: has no rows.")
    values = pd.to_numeric(frame["value"], errors="coerce")
    bad = values.isna() & frame["value"].notna()
    if bad.any():
        row = _first_bad_row(bad)
        raise InputError(f"{where}: 'value' row {row} is not a number ({frame['value'].iloc[row - 2]!r}).")
    values = values.to_numpy(dtype="float64")
    if not np.all(np.isfinite(values)):
        row = _first_bad_row(~np.isfinite(values))
        raise InputError(f"{where}: 'value' row {row} is NaN, empty or infinite; fill or drop it first.")
    if np.any(np.abs(values) > MAX_ABS_VALUE):
        row = _first_bad_row(np.abs(values) > MAX_ABS_VALUE)
        raise InputError(
            f"{where}: 'value' row {row} ({values[row - 2]:g}) is beyond +-{MAX_ABS_VALUE:g}: sigllm writes values "
            "as integers (x10^decimal) and such values overflow them; rescale the signal first."
        )
    timestamps = np.asarray(_timestamps_as_seconds(frame["timestamp"], where), dtype="int64")
    steps = np.diff(timestamps)
    if np.any(steps == 0):
        row = _first_bad_row(np.concatenate([[False], steps == 0]))
        raise InputError(f"{where}: duplicate timestamp at row {row}.")
    if np.any(steps < 0):
        row = _first_bad_row(np.concatenate([[False], steps < 0]))
        raise InputError(f"{where}: timestamps are not sorted (row {row} goes back in time); sort the file.")
    timestamps.setflags(write=False)
    values.setflags(write=False)
    return Signal(name=name, timestamps=timestamps, values=values)


def load_signal(path: str) -> Signal:
    """Read a CSV file with ``timestamp,value`` columns; the signal is named after the file."""
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a CSV file.")
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file.")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV file ({exc}).") from None
    name = os.path.splitext(os.path.basename(path))[0]
    return signal_from_frame(name, frame, where=path)


def load_signals(sources: list) -> list[Signal]:
    """Signals from CSV paths, ``(name, DataFrame)`` pairs or Signals; names must be unique."""
    signals = []
    for source in sources:
        if isinstance(source, Signal):
            signals.append(source)
        elif isinstance(source, tuple) and len(source) == 2:
            signals.append(signal_from_frame(str(source[0]), source[1]))
        elif isinstance(source, (str, os.PathLike)):
            signals.append(load_signal(os.fspath(source)))
        else:
            raise InputError(f"cannot read a signal from {type(source).__name__}; give a CSV path or (name, frame).")
    if not signals:
        raise InputError("no signals given.")
    names = [s.name for s in signals]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputError(f"two signals share the name(s) {duplicated}; rename the files.")
    return signals
