"""Resume cost: how long a restarted run takes to rebuild its state from the store.

    .venv/bin/python benchmarks/resume.py --windows 10000 100000 1000000 --out runs/resume

For each size it builds a synthetic store shaped like a ``mistral_detector`` run (prompts
of ~140 values, 10 samples of 5 steps per window), half of its windows done with answers,
then times, each on a fresh open of the store:

- ``state``: opening the store and reading every window's status and attempts, which is
  what the coordinator's queue is rebuilt from;
- ``coordinator``: a whole ``Coordinator`` start (store lease taken, state and prompts read,
  queue built), the time between a coordinator restart and its first lease;
- ``repair``: the driver's check of every chunk before a resume (``RunStore.repair``:
  every chunk decoded, checksums verified, each pending window's request checked against its key).

The store is built once per size and kept under ``--out`` (``--rebuild`` to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.synthetic import build_store  # noqa: E402
from sigray.coordinator import Coordinator, CoordinatorSettings  # noqa: E402
from sigray.store import RunStore  # noqa: E402


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(path: str, known: dict, repeats: int) -> dict:
    def state():
        return RunStore.open(path, read_only=True).read_state()

    def coordinator():
        settings = CoordinatorSettings(path, "benchmark", 60.0, 64, 3, 0, 5.0, 900.0, (0,))
        return Coordinator(settings)

    def repair():
        return RunStore.open(path, read_only=False).repair(known)

    figures = {}
    for name, fn in (("state", state), ("coordinator", coordinator), ("repair", repair)):
        figures[f"{name}_s"] = min(timed(fn)[0] for _ in range(repeats))
    os.remove(os.path.join(path, "lease.json"))  # the next measurement takes the lease afresh
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--chunk-windows", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="the best of this many timings is kept")
    parser.add_argument("--out", default="runs/resume")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    rows = []
    for n in args.windows:
        path = os.path.join(args.out, f"store-{n}")
        if args.rebuild:
            shutil.rmtree(path, ignore_errors=True)
        build_s, known = timed(lambda n=n, path=path: build_store(path, n, args.chunk_windows, done_every=2))
        row = {"windows": n, "build_s": build_s, **measure(path, known, args.repeats)}
        row["store_mb"] = _size_mb(path)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| windows | store MB | state (status + attempts) | coordinator start | repair (driver, every chunk) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['windows']:,} | {r['store_mb']:.0f} | {r['state_s']:.3f} s | {r['coordinator_s']:.3f} s "
            f"| {r['repair_s']:.2f} s |"
        )


def _size_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 2**20


if __name__ == "__main__":
    main()
