"""Run the store preparation of a run and SIGKILL this process at its K-th write or delete.

    python -m tests.crash_during_prepare STORE SIGNAL K [--new]

Every write the store makes (objects through the storage layer, zarr's chunks and
metadata) and every delete counts as one step; at step K the process kills itself with
SIGKILL, mid-way, as a crash or ``kill -9`` would. K < 0 runs to the end and prints how many
steps there were, and at which step the store's pointer was written. The run's settings
are those of ``tests/data/format1`` (hourly aggregation, the test double), so the same
harness replaces a format-2 store (``--new``) and migrates a format-1 one.
"""

from __future__ import annotations

import os
import signal
import sys

SETTINGS = {
    "engine": "test-double",
    "model": "",
    "engine_options": {"garbage_rate": 0.05},
    "max_attempts": 2,
    "flush_interval_s": 0.3,
    "batch_size": 8,
    "chunk_windows": 64,
    "pipeline_params": {"mlstars.custom.timeseries_preprocessing.time_segments_aggregate#1": {"interval": 3600}},
}


def _count_steps(kill_at: int) -> list[int]:
    """Wrap every write and delete path; return the live counter."""
    import zarr.storage._local as zarr_local

    from sigray.storage.local import LocalStorage

    steps = [0]

    def step() -> None:
        steps[0] += 1
        if steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def counted(function):
        def wrapper(*args, **kwargs):
            step()
            if function.__name__ == "write" and args[1] == "zarr.json":
                print(f"pointer {steps[0]}", flush=True)  # the step that makes a generation live
            return function(*args, **kwargs)

        return wrapper

    zarr_local._put = counted(zarr_local._put)
    for name in ("write", "remove", "remove_prefix"):
        setattr(LocalStorage, name, counted(getattr(LocalStorage, name)))
    return steps


def main(argv: list[str]) -> None:
    store, signal_csv, kill_at = argv[0], argv[1], int(argv[2])
    new = "--new" in argv

    from sigray.config import RunConfig
    from sigray.lease import release
    from sigray.plan import make_plan
    from sigray.prepare import prepare_store

    plan = make_plan(RunConfig(store=store, seed=1 if new else 0, **SETTINGS), [signal_csv])
    steps = _count_steps(kill_at)
    prepared = prepare_store(plan, "crash-test", new=new)
    release(prepared.store.storage, "crash-test")
    print(f"steps {steps[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
