"""A run's store: its format (``run_store``), result sets, and format 1 as it was read."""

from sigray.store.layout import (
    DONE,
    FAILED,
    PENDING,
    NewSignal,
    SignalEntry,
    WindowRequest,
    WindowResults,
)
from sigray.store.run_store import FORMAT_VERSION, PROGRESS_FILE, RunStore, StoreFormatError, read_pointer

__all__ = [
    "DONE",
    "FAILED",
    "FORMAT_VERSION",
    "PENDING",
    "PROGRESS_FILE",
    "NewSignal",
    "RunStore",
    "SignalEntry",
    "StoreFormatError",
    "WindowRequest",
    "WindowResults",
    "read_pointer",
]
